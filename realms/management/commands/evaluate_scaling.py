"""Record scaling advice for every realm, once or every N seconds."""
import time

from django.core.management.base import BaseCommand

from realms.scaling import evaluate_scaling


class Command(BaseCommand):
    help = "Evaluate each realm's recent load and record scaling advice (scale up, down or hold)."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0, help="Repeat every this many seconds; once if 0.")

    def handle(self, *args, **options):
        while True:
            for advice in evaluate_scaling():
                self.stdout.write(f"{advice.realm.name}: {advice.action} ({advice.reason})")
            if options["every"] <= 0:
                return
            time.sleep(options["every"])

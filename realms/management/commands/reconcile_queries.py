"""Re-enqueue or fail unfinished queries whose RQ job was lost, once or every N seconds."""
import time

from django.core.management.base import BaseCommand

from realms.reconcile import reconcile_queries


class Command(BaseCommand):
    help = "Make every accepted query end in a result or a recorded failure."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0, help="Repeat every N seconds (0: run once).")

    def handle(self, *args, **options):
        while True:
            counts = reconcile_queries()
            if counts["requeued"] or counts["failed"] or not options["every"]:
                self.stdout.write(f"requeued {counts['requeued']}, failed {counts['failed']}")
            if not options["every"]:
                return
            time.sleep(options["every"])

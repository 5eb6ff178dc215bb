"""Record scaling advice for every realm, once or every N seconds."""
from realms.scaling import evaluate_scaling
from rentahal.housekeeping import HousekeepingCommand


class Command(HousekeepingCommand):
    help = "Evaluate each realm's recent load and record scaling advice (scale up, down or hold)."

    def run_round(self, *, repeating: bool, **options) -> None:
        for advice in evaluate_scaling():
            self.stdout.write(f"{advice.realm.name}: {advice.action} ({advice.reason})")

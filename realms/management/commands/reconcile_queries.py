"""Re-enqueue or fail unfinished queries whose RQ job was lost, once or every N seconds."""
from realms.reconcile import reconcile_queries
from rentahal.housekeeping import HousekeepingCommand


class Command(HousekeepingCommand):
    help = "Make every accepted query end in a result or a recorded failure."

    def run_round(self, *, repeating: bool, **options) -> None:
        counts = reconcile_queries()
        if counts["requeued"] or counts["failed"] or not repeating:
            self.stdout.write(f"requeued {counts['requeued']}, failed {counts['failed']}")

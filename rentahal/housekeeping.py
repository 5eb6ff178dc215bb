"""The one `--every N` loop of the housekeeping commands (reconcile_queries, check_worker_health,
evaluate_scaling): do a round once, or every N seconds until stopped."""
import time

from django.core.management.base import BaseCommand


class HousekeepingCommand(BaseCommand):
    """A management command that does one round of housekeeping, once or every N seconds.

    Rounds start N seconds apart, measured from the start of the previous round, so a slow
    round does not push every later one back; a round longer than N is followed at once.
    """

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0, help="Repeat every N seconds (0: run once).")

    def handle(self, *args, every: float, **options):
        while True:
            started = time.monotonic()
            self.run_round(repeating=every > 0, **options)
            if every <= 0:
                return
            time.sleep(max(0.0, every - (time.monotonic() - started)))

    def run_round(self, *, repeating: bool, **options) -> None:
        """Do one round; `repeating` is true under --every, where quiet rounds may print nothing."""
        raise NotImplementedError

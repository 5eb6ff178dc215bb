"""The one `--every N` loop of the housekeeping commands (reconcile_queries, check_worker_health,
evaluate_scaling): do a round once, or every N seconds until stopped."""
import logging
import time

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from rentahal.errors import STORE_OUTAGES

logger = logging.getLogger(__name__)


class HousekeepingCommand(BaseCommand):
    """A management command that does one round of housekeeping, once or every N seconds.

    Rounds start N seconds apart, measured from the start of the previous round, so a slow
    round does not push every later one back; a round longer than N is followed at once.
    Under --every, a round that meets a Redis or Postgres outage is skipped, not fatal: the
    next round runs once the store is back, without waiting for a supervisor's restart.
    """

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0, help="Repeat every N seconds (0: run once).")

    def handle(self, *args, every: float, **options):
        while True:
            started = time.monotonic()
            if every <= 0:
                self.run_round(repeating=False, **options)
                return
            try:
                self.run_round(repeating=True, **options)
            except STORE_OUTAGES as exc:
                logger.warning("%s: round skipped, a store is unreachable: %s", self.__module__.rsplit(".", 1)[-1], exc)
                # A connection the outage broke is replaced on the next round's first query.
                close_old_connections()
            time.sleep(max(0.0, every - (time.monotonic() - started)))

    def run_round(self, *, repeating: bool, **options) -> None:
        """Do one round; `repeating` is true under --every, where quiet rounds may print nothing."""
        raise NotImplementedError

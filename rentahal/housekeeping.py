"""The one `--every N` loop of the housekeeping commands (reconcile_queries, check_worker_health,
evaluate_scaling): do a round once, or every N seconds until stopped, through store outages."""
import logging
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

from rentahal.errors import STORE_OUTAGES

logger = logging.getLogger(__name__)

# The pause after a round that met a store outage: the first, doubling while the outage
# lasts, up to the command's own period.
FIRST_OUTAGE_PAUSE = 1.0


class HousekeepingCommand(BaseCommand):
    """A management command that does one round of housekeeping, once or every N seconds.

    Rounds start N seconds apart, measured from the start of the previous round, so a slow
    round does not push every later one back; a round longer than N is followed at once.
    A round that meets a Redis or Postgres outage is logged and tried again after a pause,
    so the loop outlives a store restart instead of waiting for its supervisor to restart it.
    """

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0, help="Repeat every N seconds (0: run once).")

    def handle(self, *args, every: float, **options):
        pause = 0.0
        while True:
            started = time.monotonic()
            if every > 0:
                # A connection that broke in the last round (a Postgres restart) is replaced;
                # a single round keeps its caller's connection (and its transaction).
                close_old_connections()
            try:
                self.run_round(repeating=every > 0, **options)
            except STORE_OUTAGES as exc:
                if every <= 0:
                    raise CommandError(f"a store is unavailable: {exc}") from exc
                pause = min(2 * pause, every) or min(FIRST_OUTAGE_PAUSE, every)
                logger.warning("%s: a store is unavailable (%s); trying again in %.1f s", self.name, exc, pause)
                time.sleep(pause)
                continue
            pause = 0.0
            if every <= 0:
                return
            time.sleep(max(0.0, every - (time.monotonic() - started)))

    @property
    def name(self) -> str:
        return self.__module__.rsplit(".", 1)[-1]

    def run_round(self, *, repeating: bool, **options) -> None:
        """Do one round; `repeating` is true under --every, where quiet rounds may print nothing."""
        raise NotImplementedError

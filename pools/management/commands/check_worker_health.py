"""Probe every worker's health route in parallel and update scores (PROTOCOL.md §3); prune
attempt outcomes past their retention."""
import logging
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from pools.actions import prune_outcomes
from pools.health import check_worker_health

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Probe every worker once, or every N seconds with --every N (the original checked every 60 s)."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0, help="Repeat every this many seconds; once if 0.")

    def handle(self, *args, **options):
        every = options["every"]
        while True:
            started = time.monotonic()
            for worker, outcome in check_worker_health():
                self.stdout.write(f"{worker}: {outcome}")
            pruned = prune_outcomes(older_than_days=settings.RENTAHAL_OUTCOME_RETENTION_DAYS)
            if pruned:
                logger.info("pruned %d attempt outcomes older than %g days", pruned, settings.RENTAHAL_OUTCOME_RETENTION_DAYS)
            if not every:
                return
            time.sleep(max(0.0, every - (time.monotonic() - started)))

"""Probe every worker's health route in parallel and update scores (docs/protocol.md §3); sample
every worker's health for the A/B comparison; prune outcomes and samples past their retention."""
import logging

from django.conf import settings

from pools.actions import prune_outcomes, record_health_samples
from pools.health import check_worker_health
from rentahal.housekeeping import HousekeepingCommand

logger = logging.getLogger(__name__)


class Command(HousekeepingCommand):
    help = "Probe every worker once, or every N seconds with --every N (the original checked every 60 s)."

    def run_round(self, *, repeating: bool, **options) -> None:
        for worker, outcome in check_worker_health():
            self.stdout.write(f"{worker}: {outcome}")
        record_health_samples(retention_hours=settings.RENTAHAL_HEALTH_SAMPLE_RETENTION_HOURS)
        pruned = prune_outcomes(older_than_days=settings.RENTAHAL_OUTCOME_RETENTION_DAYS)
        if pruned:
            logger.info("pruned %d attempt outcomes older than %g days", pruned, settings.RENTAHAL_OUTCOME_RETENTION_DAYS)

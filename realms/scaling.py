"""Scaling advice: a periodic look at each realm's recent window, recorded for operators and
handed to a provisioning hook (RENTAHAL_SCALING_HOOK; the default only logs)."""
import logging

from django.conf import settings
from django.utils.module_loading import import_string

from realms.models import Realm, ScalingAdvice
from realms.status import available_workers
from rentahal import metrics

logger = logging.getLogger(__name__)

Action = ScalingAdvice.Action


def advise(*, workers: int, utilisation: float, error_rate: float, min_workers: int, max_workers: int) -> tuple[str, str]:
    """Return (action, reason) for a realm's figures; never advise removing its last worker."""
    if workers == 0:
        return Action.UP, "the realm has no available worker"
    if utilisation > settings.RENTAHAL_SCALE_UP_UTILISATION or error_rate > settings.RENTAHAL_SCALE_UP_ERROR_RATE:
        why = (
            f"utilisation {utilisation:.0%}"
            if utilisation > settings.RENTAHAL_SCALE_UP_UTILISATION
            else f"error rate {error_rate:.1%}"
        )
        if workers >= max_workers:
            return Action.HOLD, f"{why} calls for more workers, but the realm is at max_workers ({max_workers})"
        return Action.UP, f"{why} is above the threshold"
    if utilisation < settings.RENTAHAL_SCALE_DOWN_UTILISATION and workers > 1:
        if workers <= min_workers:
            return Action.HOLD, f"utilisation {utilisation:.0%} is low, but the realm is at min_workers ({min_workers})"
        return Action.DOWN, f"utilisation {utilisation:.0%} is below the threshold with {workers} workers"
    return Action.HOLD, f"utilisation {utilisation:.0%}, error rate {error_rate:.1%}"


def evaluate_realm(realm: Realm) -> ScalingAdvice:
    """Record and hand on the advice for one realm."""
    workers = len(available_workers(realm))
    figures = metrics.realm_metrics(realm.name, workers=workers)
    action, reason = advise(
        workers=workers,
        utilisation=figures["utilisation"],
        error_rate=figures["error_rate"],
        min_workers=realm.min_workers,
        max_workers=realm.max_workers,
    )
    advice = ScalingAdvice.objects.create(
        realm=realm,
        action=action,
        reason=reason[:255],
        workers=workers,
        utilisation=figures["utilisation"],
        error_rate=figures["error_rate"],
        queries=figures["window_queries"],
    )
    import_string(settings.RENTAHAL_SCALING_HOOK)(advice)
    return advice


def evaluate_scaling() -> list[ScalingAdvice]:
    return [evaluate_realm(realm) for realm in Realm.objects.all()]


def log_advice(advice: ScalingAdvice) -> None:
    """The default provisioning hook: log advice that asks for a change."""
    if advice.action != Action.HOLD:
        logger.info("realm %s: scale %s (%s)", advice.realm.name, advice.action, advice.reason)

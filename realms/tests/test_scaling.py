"""Scaling advice: busy or failing realms are told to grow, idle ones to shrink, never below
one worker; every evaluation is recorded and handed to the provisioning hook."""
import pytest

from realms.models import ScalingAdvice
from realms.scaling import advise, evaluate_scaling
from rentahal import metrics

pytestmark = pytest.mark.django_db(databases="__all__")

handed_on: list[ScalingAdvice] = []


def remember_advice(advice: ScalingAdvice) -> None:
    handed_on.append(advice)


def figures(**overrides) -> dict:
    return {"workers": 2, "utilisation": 0.5, "error_rate": 0.0, "min_workers": 1, "max_workers": 10, **overrides}


@pytest.mark.parametrize(
    ("overrides", "action"),
    [
        ({"utilisation": 0.85}, "up"),
        ({"error_rate": 0.06}, "up"),
        ({"utilisation": 0.1}, "down"),
        ({"utilisation": 0.5}, "hold"),
        ({"utilisation": 0.1, "workers": 1}, "hold"),
        ({"utilisation": 0.1, "workers": 2, "min_workers": 2}, "hold"),
        ({"utilisation": 0.95, "workers": 10}, "hold"),
        ({"workers": 0, "utilisation": 0.0}, "up"),
    ],
)
def test_advice_follows_the_thresholds(overrides, action):
    assert advise(**figures(**overrides))[0] == action


def test_the_last_worker_of_a_realm_is_never_advised_away():
    action, reason = advise(**figures(workers=1, utilisation=0.0, min_workers=0))

    assert action == "hold"
    assert "utilisation 0%" in reason


def test_evaluation_records_advice_per_realm_and_hands_it_to_the_hook(
    default_realms, settings, register_worker, fake_server
):
    settings.RENTAHAL_SCALING_HOOK = "realms.tests.test_scaling.remember_advice"
    settings.RENTAHAL_METRICS_WINDOW = 100
    handed_on.clear()
    register_worker(fake_server, "a1111", query_type="imagine", name="sd-1", realm="$IMAGINE")
    metrics.record_query_outcomes([metrics.QueryOutcome("$IMAGINE", worker="sd-1", processing_time=95, ok=True, busy_seconds=95)])
    evaluate_scaling()

    imagine = ScalingAdvice.objects.get(realm__name="$IMAGINE")
    assert (imagine.action, imagine.workers, imagine.utilisation) == ("up", 1, 0.95)
    assert ScalingAdvice.objects.count() == 4
    assert {advice.realm.name for advice in handed_on} == {"$CHAT", "$VISION", "$IMAGINE", "$SPEECH"}

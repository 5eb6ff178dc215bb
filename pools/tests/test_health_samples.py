"""Health over time for the A/B comparison: every health round samples each worker (bounded
by a retention), and the comparison and its admin page show both aliases' health, latency
and errors over time."""
import datetime

import pytest
from django.core.management import call_command
from django.utils import timezone

from pools import actions
from pools.comparison import compare_pools
from pools.models import HealthSample, SelectionOutcome, Worker

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_pools(fake_server, register_worker):
    register_worker(fake_server, name="alpha")
    register_worker(fake_server, name="beta")
    actions.create_pool("$CHAT_A", query_type="chat", members=["alpha"])
    actions.create_pool("$CHAT_B", query_type="chat", members=["beta"])


def test_a_health_round_samples_every_worker(two_pools):
    Worker.objects.filter(name="beta").update(is_blacklisted=True)

    call_command("check_worker_health", stdout=open("/dev/null", "w"))

    samples = {sample.worker: sample for sample in HealthSample.objects.all()}
    assert sorted(samples) == ["alpha", "beta"]
    assert (samples["alpha"].score, samples["alpha"].state) == (100, "serving")
    assert samples["beta"].state == "blacklisted"


def test_samples_older_than_the_retention_are_pruned(two_pools):
    old = timezone.now() - datetime.timedelta(hours=3)
    HealthSample.objects.create(worker="alpha", score=50, state="serving", created_at=old)

    actions.record_health_samples(retention_hours=2)

    assert HealthSample.objects.filter(created_at=old).count() == 0
    assert HealthSample.objects.count() == 2


def test_the_comparison_shows_each_aliases_health_and_errors_over_time(two_pools):
    earlier = timezone.now() - datetime.timedelta(minutes=2)
    HealthSample.objects.create(worker="alpha", score=60, latency=0.5, state="serving", created_at=earlier)
    HealthSample.objects.create(worker="beta", score=0, state="blacklisted", created_at=earlier)
    actions.record_health_samples(retention_hours=2)
    SelectionOutcome.objects.create(pool="$CHAT_B", worker="beta", result="server", duration=0.1)
    SelectionOutcome.objects.create(pool="$CHAT_B", worker="beta", result="ok", duration=0.1)

    report = compare_pools("$CHAT_A", "$CHAT_B", hours=1)

    assert [(row["score"], row["latency"], row["serving"]) for row in report["a"]["health_over_time"]] == [
        (60, 0.5, 1), (100, None, 1)
    ]
    assert [(row["score"], row["serving"]) for row in report["b"]["health_over_time"]] == [(0, 0), (100, 1)]
    assert [(row["attempts"], row["errors"]) for row in report["b"]["errors_over_time"]] == [(2, 1)]
    assert report["a"]["errors_over_time"] == []


def test_the_admin_draws_both_aliases_over_time(admin_client, two_pools):
    actions.record_health_samples(retention_hours=2)

    page = admin_client.get("/admin/pools/poolalias/compare/", {"a": "$CHAT_A", "b": "$CHAT_B", "hours": "1"})

    assert page.status_code == 200
    assert page.context["report"]["a"]["health_over_time"][0]["score"] == 100
    content = page.content.decode()
    assert content.count("<canvas data-chart=") == 3
    assert 'id="compare-report"' in content

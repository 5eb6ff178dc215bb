"""The periodic health check (docs/protocol.md §3): each wire format's natural probe, score rules,
blacklisting and restoring, all in the shared Redis state and none in the pool configuration;
and `manage.py check_worker_health`, which also prunes old attempt outcomes."""
import datetime

import pytest
from django.core.management import call_command
from django.utils import timezone

from pools import actions, state
from pools.config import snapshot_cache
from pools.health import check_worker_health, serving_workers
from pools.models import SelectionOutcome, Worker
from pools.selection import NoWorkerAvailable, plan_selection, select_worker

pytestmark = pytest.mark.django_db(transaction=True)


def score(worker) -> tuple[float, bool]:
    """Return the worker's runtime health score and whether the health rules blacklisted it."""
    health = state.health_of([worker.name])[worker.name]
    return health.score, health.is_blacklisted


def config_version() -> str | None:
    return snapshot_cache.client().get(snapshot_cache.version_key)


def worker_rows() -> list[dict]:
    return list(Worker.objects.order_by("name").values())


def selected(query_type="chat") -> str:
    """Return the worker a query of `query_type` in $CHAT would be given now."""
    plan = plan_selection(snapshot_cache.current(), query_type=query_type, realm="$CHAT")
    return select_worker(plan, state.read_state(plan)).worker.name


@pytest.mark.parametrize("wire_format", ["predict", "ollama", "openai"])
def test_a_healthy_answer_raises_the_score_by_ten_up_to_a_hundred(wire_format, fake_server, register_worker):
    worker = register_worker(fake_server, wire_format, health_score=85)

    check_worker_health()
    first = score(worker)
    check_worker_health()

    assert first == (95, False)
    assert score(worker) == (100, False)


@pytest.mark.parametrize("wire_format", ["predict", "ollama", "openai"])
def test_a_non_200_health_answer_costs_ten(wire_format, fake_server, register_worker):
    fake_server.configure(health_status=503)
    worker = register_worker(fake_server, wire_format)

    check_worker_health()

    assert score(worker) == (90, False)


def test_an_unreachable_worker_loses_five(register_worker):
    class Closed:
        url = "http://127.0.0.1:9"

    worker = register_worker(Closed, "predict")

    outcome = dict(check_worker_health())[worker.name]

    assert outcome.startswith("unreachable")
    assert score(worker) == (95, False)


def test_a_worker_whose_score_reaches_zero_is_blacklisted(fake_server, register_worker):
    fake_server.configure(health_status=500)
    worker = register_worker(fake_server, "openai", health_score=10)

    check_worker_health()

    assert score(worker) == (0, True)


def test_a_blacklisted_worker_that_answers_is_restored_at_fifty(fake_server, register_worker):
    worker = register_worker(fake_server, "openai", health_score=0)

    check_worker_health()

    assert score(worker) == (50, False)


def test_an_a1111_worker_is_never_blacklisted_for_having_no_health_route(fake_server, register_worker):
    worker = register_worker(fake_server, "a1111", query_type="imagine", health_score=40)

    outcome = dict(check_worker_health())[worker.name]

    assert outcome == "no health route; unchanged"
    assert score(worker) == (40, False)


def test_every_worker_is_probed_in_one_pass(fake_servers, register_worker):
    servers = [fake_servers() for _ in range(5)]
    for server in servers:
        register_worker(server, "predict")

    check_worker_health()

    assert [server.stats()["requests"] for server in servers] == [{"/health": 1}] * 5


def test_the_command_prints_what_happened_to_each_worker(fake_server, register_worker, capsys):
    register_worker(fake_server, "ollama", name="llama")

    call_command("check_worker_health")

    assert capsys.readouterr().out == "llama: healthy\n"
    assert state.health_of(["llama"])["llama"].last_active is not None


def test_worker_update_frames_show_the_score_and_last_answer_the_health_check_left(fake_server, register_worker):
    register_worker(fake_server, "openai", name="llama", health_score=85)

    check_worker_health()

    [frame] = actions.list_workers()
    assert (frame["name"], frame["health_score"], frame["is_blacklisted"]) == ("llama", 95, False)
    assert frame["last_active"] is not None


def test_a_failed_probe_changes_what_selection_sees_and_not_the_pool_configuration(fake_server, register_worker):
    fake_server.configure(health_status=500)
    worker = register_worker(fake_server, "openai", health_score=10)
    assert selected() == worker.name
    version, rows = config_version(), worker_rows()

    check_worker_health()

    with pytest.raises(NoWorkerAvailable, match=f"{worker.name} is blacklisted"):
        selected()
    assert config_version() == version
    assert worker_rows() == rows


def test_a_healthy_probe_brings_a_worker_back_without_touching_the_pool_configuration(fake_server, register_worker):
    worker = register_worker(fake_server, "openai", health_score=0)
    version, rows = config_version(), worker_rows()

    check_worker_health()

    assert selected() == worker.name
    assert config_version() == version
    assert worker_rows() == rows


def test_a_healthy_probe_never_lifts_an_operators_blacklist(fake_server, register_worker):
    worker = register_worker(fake_server, "openai", is_blacklisted=True)

    check_worker_health()

    assert score(worker) == (100, False)
    assert Worker.objects.get(pk=worker.pk).is_blacklisted
    assert serving_workers("$CHAT", "chat") == []


def test_an_operators_blacklist_excludes_the_worker_and_changes_the_pool_configuration(fake_server, register_worker):
    worker = register_worker(fake_server, "openai")
    assert selected() == worker.name
    version = config_version()

    worker.is_blacklisted = True
    worker.save(update_fields=["is_blacklisted"])

    with pytest.raises(NoWorkerAvailable, match=f"{worker.name} is blacklisted"):
        selected()
    assert config_version() != version


def test_a_worker_the_health_rules_blacklisted_is_not_counted_as_serving_the_realm(fake_server, register_worker):
    up = register_worker(fake_server, "openai", name="up")
    register_worker(fake_server, "openai", name="down", health_score=0)

    assert serving_workers("$CHAT", "chat") == [up.name]


def outcome_aged(days: float) -> SelectionOutcome:
    row = SelectionOutcome.objects.create(worker="chat-1", result=SelectionOutcome.Result.OK, duration=0.1)
    SelectionOutcome.objects.filter(pk=row.pk).update(created_at=timezone.now() - datetime.timedelta(days=days))
    return row


def test_the_health_check_command_prunes_attempt_outcomes_past_their_retention(settings):
    settings.RENTAHAL_OUTCOME_RETENTION_DAYS = 30
    outcome_aged(31)
    recent = outcome_aged(29)

    call_command("check_worker_health")

    assert list(SelectionOutcome.objects.values_list("pk", flat=True)) == [recent.pk]


def test_pruning_a_backlog_larger_than_one_batch_deletes_all_of_it(monkeypatch):
    monkeypatch.setattr(actions, "PRUNE_BATCH", 2)
    for _ in range(5):
        outcome_aged(40)
    outcome_aged(1)

    assert actions.prune_outcomes(older_than_days=30) == 5
    assert SelectionOutcome.objects.count() == 1

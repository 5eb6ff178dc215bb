"""Per-realm metrics: counts and recent percentiles every process agrees on, and /metrics in
the Prometheus text format with the numbers of what was sent."""
from collections import Counter

import pytest
from asgiref.sync import sync_to_async
from django.test import Client as HttpClient
from prometheus_client.parser import text_string_to_metric_families

from rentahal import metrics

pytestmark = pytest.mark.django_db(databases="__all__")


class Clock:
    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now


def test_percentiles_come_from_the_recorded_processing_times():
    for seconds in range(1, 101):
        metrics.record_query_outcomes([metrics.QueryOutcome("$CHAT", worker="chat-1", processing_time=float(seconds), ok=True)])
    metrics.record_query_outcomes([metrics.QueryOutcome("$CHAT", worker="chat-1", processing_time=0.5, ok=False)])
    chat = metrics.realm_metrics("$CHAT", workers=1)

    assert chat["processing_time"] == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert (chat["queries_processed"], chat["errors"]) == (101, 1)
    assert chat["error_rate"] == pytest.approx(1 / 101)
    assert chat["worker_queries"] == {"chat-1": 101}


def test_a_batch_of_outcomes_costs_redis_the_commands_of_one(redis_commands):
    def commands_for(outcomes) -> Counter:
        with redis_commands() as commands:
            metrics.record_query_outcomes(outcomes)
        return Counter(commands)

    one = commands_for([metrics.QueryOutcome("$CHAT", "chat-1", 1.0, ok=True)])
    batch = commands_for([metrics.QueryOutcome("$CHAT", "chat-1", float(seconds), ok=True) for seconds in range(1, 21)])

    chat = metrics.realm_metrics("$CHAT", workers=1)
    assert batch == one
    assert (chat["queries_processed"], chat["window_queries"], chat["worker_queries"]) == (21, 21, {"chat-1": 21})
    assert chat["processing_time"]["p99"] == 20.0


def test_percentiles_cover_only_the_recent_window(monkeypatch, settings):
    settings.RENTAHAL_METRICS_WINDOW = 60
    clock = Clock(1_000_000.0)
    monkeypatch.setattr(metrics, "time", clock)
    for _ in range(10):
        metrics.record_query_outcomes([metrics.QueryOutcome("$IMAGINE", worker="sd-1", processing_time=40.0, ok=True)])
    clock.now += 61
    for _ in range(10):
        metrics.record_query_outcomes([metrics.QueryOutcome("$IMAGINE", worker="sd-1", processing_time=2.0, ok=True)])
    imagine = metrics.realm_metrics("$IMAGINE", workers=1)

    assert imagine["processing_time"]["p99"] == 2.0
    assert imagine["window_queries"] == 10
    assert imagine["queries_processed"] == 20


def test_utilisation_is_busy_time_over_the_window_per_worker(settings):
    settings.RENTAHAL_METRICS_WINDOW = 100
    metrics.record_query_outcomes([metrics.QueryOutcome("$CHAT", worker="a", processing_time=50, ok=True, busy_seconds=50)])
    metrics.record_query_outcomes([metrics.QueryOutcome("$CHAT", worker="b", processing_time=10, ok=True, busy_seconds=10)])
    chat = metrics.realm_metrics("$CHAT", workers=2)

    assert chat["worker_utilisation"] == {"a": 0.5, "b": 0.1}
    assert chat["utilisation"] == pytest.approx(0.3)


def test_connections_count_live_sockets_and_keep_their_peak():
    for _ in range(3):
        metrics.record_connection("$CHAT", 1)
    metrics.record_connection("$CHAT", -1)

    chat = metrics.realm_metrics("$CHAT", workers=0)

    assert (chat["connections"], chat["peak_connections"]) == (2, 3)


def test_the_connection_count_survives_a_redis_that_forgot_its_scripts(clean_redis):
    metrics.record_connection("$CHAT", 1)
    clean_redis.script_flush()

    metrics.record_connection("$CHAT", 1)

    assert metrics.realm_metrics("$CHAT", workers=0)["connections"] == 2


def test_recording_many_outcomes_opens_no_new_redis_connection_per_call(clean_redis):
    metrics.record_query_outcomes([metrics.QueryOutcome("$CHAT", worker="chat-1", processing_time=1.0, ok=True)])
    received = clean_redis.info("stats")["total_connections_received"]

    for _ in range(20):
        metrics.record_query_outcomes([metrics.QueryOutcome("$CHAT", worker="chat-1", processing_time=1.0, ok=True)])
        metrics.record_connection("$CHAT", 1)

    assert clean_redis.info("stats")["total_connections_received"] == received
    assert metrics.realm_metrics("$CHAT", workers=1)["queries_processed"] == 21


def test_a_metrics_outage_never_fails_the_query_being_counted(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"

    metrics.record_query_outcomes([metrics.QueryOutcome("$CHAT", worker="chat-1", processing_time=1.0, ok=False)])
    assert metrics.record_connection("$CHAT", 1) == 0


SCRAPER_TOKEN = "scraper-token"


def scrape() -> dict:
    """Return {(name, labels): value} of every sample /metrics serves to a scraper (holding
    the metrics token), via Prometheus's parser."""
    response = HttpClient().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {SCRAPER_TOKEN}")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.mark.django_db(transaction=True, databases="__all__")
async def test_metrics_endpoint_reports_what_the_worker_processes_recorded(
    metrics_dir, start_worker, fake_server, register_worker, alice, connect, settings
):
    settings.RENTAHAL_METRICS_TOKEN = SCRAPER_TOKEN
    await sync_to_async(register_worker)(fake_server, "openai", query_type="chat", name="chat-1", realm="$CHAT")
    await sync_to_async(start_worker)("$CHAT", "$VISION")
    client = await connect(alice.guid)
    for index in range(3):
        await client.send({"type": "submit_query", "query": {"prompt": f"hello {index}", "query_type": "chat"}})
        await client.receive_until("query_result")
    await client.send({"type": "submit_query", "query": {"prompt": "what is it", "query_type": "vision", "image": "aGk="}})
    failed = (await client.receive_until("error"))[-1]
    assert failed["message"].startswith("Query failed")

    samples = await sync_to_async(scrape)()

    chat, vision = (("realm", "$CHAT"),), (("realm", "$VISION"),)
    assert samples[("rentahal_queries_total", chat)] == 3
    assert samples[("rentahal_queries_total", vision)] == 1
    assert samples[("rentahal_query_errors_total", vision)] == 1
    assert ("rentahal_query_errors_total", chat) not in samples
    assert samples[("rentahal_query_processing_seconds_count", chat)] == 3
    assert samples[("rentahal_worker_queries_total", (("realm", "$CHAT"), ("worker", "chat-1")))] == 3
    assert samples[("rentahal_realm_workers", chat)] == 1
    assert samples[("rentahal_realm_queue_depth", chat)] == 0
    assert sum(value for (name, _), value in samples.items() if name == "rentahal_realm_connections") == 1
    assert ("rentahal_realm_recent_processing_seconds", (("quantile", "0.99"), ("realm", "$CHAT"))) in samples

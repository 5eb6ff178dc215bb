"""serve() against fake model servers failing on purpose: failover, cooldowns by error class,
recovery through the health check, concurrency caps and in-flight leases."""
import time

import pytest
from asgiref.sync import sync_to_async

from pools import actions, config, health, state
from pools.clients import ModelRequest, ModelServerError
from pools.dispatch import serve
from pools.models import SelectionOutcome, Worker
from pools.selection import MAX_HEALTH, NoWorkerAvailable

pytestmark = pytest.mark.django_db(transaction=True)


def chat(prompt="hello", model_name="") -> ModelRequest:
    return ModelRequest(prompt=prompt, query_type="chat", model_name=model_name)


@sync_to_async
def add(server, name, *, health_score=MAX_HEALTH, realm="", max_concurrency=0, wire_format="openai") -> Worker:
    worker = actions.add_worker(
        name=name, address=server.url, query_type="chat", wire_format=wire_format, model="fake",
        realm=realm, max_concurrency=max_concurrency,
    )
    state.change_health(name, health_score - MAX_HEALTH)
    return worker


@sync_to_async
def make_pool(name, members, *, strategy="health", realm=""):
    return actions.create_pool(name, query_type="chat", members=members, strategy=strategy, realm=realm)


def score_of(name) -> float:
    return state.health_of([name])[name].score


@sync_to_async
def outcomes() -> list[tuple[str, str, int]]:
    return list(SelectionOutcome.objects.order_by("created_at", "id").values_list("worker", "result", "attempt"))


async def test_a_query_with_one_bad_member_fails_over_and_is_answered_once(fake_servers):
    bad, good = fake_servers(failure_rate=1.0), fake_servers()
    await add(bad, "bad", health_score=100)
    await add(good, "good", health_score=60)
    await make_pool("$CHAT", ["bad", "good"])

    served = await serve(chat("are you there"), realm="$CHAT")

    assert (served.worker, served.pool, served.attempts) == ("good", "$CHAT", 2)
    assert "are you there" in served.answer.result
    assert await outcomes() == [("bad", "server", 1), ("good", "ok", 2)]
    assert good.stats()["requests"] == {"/v1/chat/completions": 1}


async def test_a_server_fault_lowers_the_score_and_cools_the_member(fake_servers):
    bad, good = fake_servers(failure_rate=1.0), fake_servers()
    await add(bad, "bad")
    await add(good, "good", health_score=50)
    await make_pool("$CHAT", ["bad", "good"])

    await serve(chat(), realm="$CHAT")
    second = await serve(chat(), realm="$CHAT")

    assert second.worker == "good"
    assert score_of("bad") == 90
    view = state.member_views(["bad"])["bad"]
    assert view["cooldown_until"] > time.time()
    assert "HTTP 500" in view["cooldown_reason"]
    assert bad.stats()["requests"] == {"/v1/chat/completions": 1}


def config_version() -> str | None:
    return config.snapshot_cache.client().get(config.snapshot_cache.version_key)


@sync_to_async
def worker_rows() -> list[dict]:
    return list(Worker.objects.order_by("name").values())


async def test_a_failed_query_blacklists_a_worker_at_zero_without_touching_the_pool_configuration(fake_servers):
    await add(fake_servers(failure_rate=1.0), "failing", health_score=10)
    await add(fake_servers(), "spare", health_score=5)
    await make_pool("$CHAT", ["failing", "spare"])
    version, rows = config_version(), await worker_rows()

    first = await serve(chat(), realm="$CHAT")
    state.clear_cooldown("failing")
    second = await serve(chat(), realm="$CHAT")

    assert (first.worker, first.attempts, second.worker, second.attempts) == ("spare", 2, "spare", 1)
    assert (score_of("failing"), state.health_of(["failing"])["failing"].is_blacklisted) == (0, True)
    assert config_version() == version
    assert await worker_rows() == rows


async def test_an_answered_query_leaves_the_pool_configuration_alone(fake_servers):
    await add(fake_servers(), "a")
    await serve(chat(), realm="$CHAT")
    version, rows = config_version(), await worker_rows()

    await serve(chat(), realm="$CHAT")

    assert config_version() == version
    assert await worker_rows() == rows


async def test_a_cooled_member_recovers_when_its_health_check_passes(fake_servers):
    flaky, steady = fake_servers(failure_rate=1.0), fake_servers()
    await add(flaky, "flaky")
    await add(steady, "steady", health_score=50)
    await make_pool("$CHAT", ["flaky", "steady"])
    await serve(chat(), realm="$CHAT")

    flaky.configure(failure_rate=0.0)
    report = dict(await health.acheck_worker_health())
    served = await serve(chat(), realm="$CHAT")

    assert report["flaky"] == "healthy"
    assert served.worker == "flaky"
    assert score_of("flaky") == 100


async def test_a_bad_request_is_not_retried_and_costs_the_worker_nothing(fake_servers):
    picky, other = fake_servers(failure_rate=1.0, fail_status=400), fake_servers()
    await add(picky, "picky")
    await add(other, "other", health_score=50)
    await make_pool("$CHAT", ["picky", "other"])

    with pytest.raises(ModelServerError) as error:
        await serve(chat(), realm="$CHAT")

    assert error.value.kind == "client"
    assert other.stats()["requests"] == {}
    assert score_of("picky") == 100
    assert state.member_views(["picky"])["picky"]["cooldown_until"] is None


@pytest.mark.parametrize(
    ("knobs", "at_least", "at_most"),
    [
        ({"failure_rate": 1.0, "fail_status": 429, "retry_after": 120.0}, 100, 121),
        ({"failure_rate": 1.0, "fail_status": 503}, 1, 60),
        ({"api_key": "the-right-key"}, 3000, 3601),
    ],
    ids=["rate-limited-honours-retry-after", "server-error-seconds", "auth-failure-an-hour"],
)
async def test_cooldown_length_depends_on_the_error_class(knobs, at_least, at_most, fake_servers):
    failing, good = fake_servers(**knobs), fake_servers()
    await add(failing, "failing")
    await add(good, "good", health_score=50)
    await make_pool("$CHAT", ["failing", "good"])

    served = await serve(chat(), realm="$CHAT")

    assert served.worker == "good"
    remaining = state.member_views(["failing"])["failing"]["cooldown_until"] - time.time()
    assert at_least <= remaining <= at_most


async def test_every_member_failing_ends_with_the_last_servers_error(fake_servers, settings):
    settings.RENTAHAL_MAX_ATTEMPTS = 2
    for name in ("one", "two", "three"):
        await add(fake_servers(failure_rate=1.0, fail_status=502), name)
    await make_pool("$CHAT", ["one", "two", "three"])

    with pytest.raises(ModelServerError, match="HTTP 502"):
        await serve(chat(), realm="$CHAT")

    assert len(await outcomes()) == 2


async def test_an_alias_whose_members_are_all_out_says_so(fake_servers):
    await add(fake_servers(), "gone", health_score=0)
    await make_pool("$CHAT", ["gone"])

    with pytest.raises(NoWorkerAvailable, match=r"pool \$CHAT has no available member \(gone is blacklisted\)"):
        await serve(chat(model_name="$CHAT"), realm="$CHAT")


async def test_an_unknown_alias_is_named(fake_servers):
    await add(fake_servers(), "someone")

    with pytest.raises(NoWorkerAvailable, match=r"No pool alias named \$MISSING exists"):
        await serve(chat(model_name="$MISSING"), realm="$CHAT")


async def test_a_worker_named_in_model_name_serves(fake_servers):
    await add(fake_servers(), "favourite", health_score=10)
    await add(fake_servers(), "popular", health_score=100)

    served = await serve(chat(model_name="favourite"), realm="$CHAT")

    assert (served.worker, served.strategy) == ("favourite", "named")


async def test_a_member_at_its_cap_is_skipped_not_overloaded(fake_servers):
    await add(fake_servers(), "single", max_concurrency=1)
    await add(fake_servers(), "spare", health_score=50)
    await make_pool("$CHAT", ["single", "spare"])
    held = state.acquire_lease("single", cap=1, ttl=60)

    served = await serve(chat(), realm="$CHAT")

    assert served.worker == "spare"
    assert state.acquire_lease("single", cap=1, ttl=60) is None
    state.release_lease("single", held)


async def test_in_flight_counts_return_to_zero_after_queries(fake_servers):
    await add(fake_servers(), "a")
    await add(fake_servers(), "b")
    await make_pool("$CHAT", ["a", "b"], strategy="least_busy")

    for _ in range(4):
        await serve(chat(), realm="$CHAT")

    assert [view["in_flight"] for view in state.member_views(["a", "b"]).values()] == [0, 0]


def test_a_lease_left_by_a_crashed_process_stops_counting_when_it_expires(clean_redis):
    state.client().zadd(state.lease_key("a"), {"lease-of-a-dead-process": time.time() - 1})
    live = state.acquire_lease("a", cap=1, ttl=60)

    assert live is not None
    assert state.in_flight("a") == 1
    state.release_lease("a", live)
    state.release_lease("a", live)
    assert state.in_flight("a") == 0


async def test_a_foreign_realms_pool_serves_and_is_reported_as_cross_realm(fake_servers):
    await add(fake_servers(), "home", realm="$CHAT")
    await add(fake_servers(), "abroad", realm="$OTHER")
    await sync_to_async(Worker.objects.filter(name="home").update)(is_blacklisted=True)
    await make_pool("$CHAT", ["home"], realm="$CHAT")
    await make_pool("$CHAT", ["abroad"], realm="$OTHER")

    served = await serve(chat(), realm="$CHAT")

    assert (served.worker, served.worker_realm, served.is_cross_realm) == ("abroad", "$OTHER", True)


async def test_affinity_keeps_a_users_queries_on_one_member(fake_servers):
    for name in ("a", "b", "c"):
        await add(fake_servers(), name)
    await make_pool("$CHAT", ["a", "b", "c"], strategy="affinity")

    alice = {(await serve(chat(), realm="$CHAT", affinity_key="alice")).worker for _ in range(5)}

    assert len(alice) == 1


async def test_round_robin_takes_turns(fake_servers):
    for name in ("a", "b", "c"):
        await add(fake_servers(), name)
    await make_pool("$CHAT", ["a", "b", "c"], strategy="round_robin")

    order = [(await serve(chat(), realm="$CHAT")).worker for _ in range(6)]

    assert order == ["a", "b", "c", "a", "b", "c"]


async def test_a_served_query_costs_three_redis_commands_once_its_scripts_are_loaded(fake_servers, redis_commands):
    await add(fake_servers(), "a")
    await make_pool("$CHAT", ["a"], strategy="round_robin")
    await serve(chat(), realm="$CHAT", affinity_key="alice")

    with redis_commands() as commands:
        served = await serve(chat(), realm="$CHAT", affinity_key="alice")

    assert served.worker == "a"
    # The state read (which checks the config version and that nobody waits in line), the
    # lease with its tally, then its release with the outcome.
    assert commands == ["EVALSHA", "EVALSHA", "EVALSHA"]


async def test_a_query_planned_on_a_changed_configuration_plans_again_without_losing_its_turn(fake_servers):
    for name in ("a", "b", "c"):
        await add(fake_servers(), name)
    pool = await make_pool("$CHAT", ["a", "b"], strategy="round_robin")
    first = await serve(chat(), realm="$CHAT")

    await sync_to_async(actions.save_pool)(pool, members=["a", "b", "c"])
    later = [(await serve(chat(), realm="$CHAT")).worker for _ in range(2)]

    assert [first.worker, *later] == ["a", "b", "c"]


async def test_serving_goes_on_after_redis_forgets_its_scripts(fake_servers, clean_redis):
    await add(fake_servers(), "a")
    await serve(chat(), realm="$CHAT")
    clean_redis.script_flush()

    served = await serve(chat(), realm="$CHAT")

    assert served.worker == "a"
    assert state.member_views(["a"])["a"]["chosen"] == 2


def test_a_granted_lease_tallies_its_choice_and_a_refused_one_does_not(clean_redis):
    choice = state.Choice(7, affinity_key="conversation-1", remember=True, advance_pool=7)
    held = state.acquire_lease("a", cap=1, ttl=60, choice=choice)

    assert state.acquire_lease("a", cap=1, ttl=60, choice=choice) is None
    assert state.member_views(["a"], 7)["a"]["chosen"] == 1
    assert state.client().get(state.ticket_key(7)) == "1"
    assert state.client().get(state.affinity_key_for(7, "conversation-1")) == "a"
    state.release_lease("a", held)


def test_pool_configuration_is_read_in_four_queries_and_then_from_the_cache(fake_server, register_worker, django_assert_num_queries):
    worker = register_worker(fake_server, name="a")
    actions.create_pool("$CHAT", query_type="chat", members=[worker.name])

    with django_assert_num_queries(4):
        first = config.snapshot_cache.current()
    with django_assert_num_queries(0):
        second = config.snapshot_cache.current()

    assert first is second
    assert first.pools[0].members == ("a",)


def test_a_configuration_change_is_seen_by_the_next_selection(fake_server, register_worker):
    register_worker(fake_server, name="a")
    config.snapshot_cache.current()
    register_worker(fake_server, name="b")

    assert set(config.snapshot_cache.current().workers) == {"a", "b"}

"""select_worker on crafted pools: every strategy, auto's thresholds at their edges,
specializations, the realm rules, and what a user reads when nobody can serve."""
import dataclasses
import random
from collections import Counter

import pytest

from pools.selection import (
    MemberState,
    NoWorkerAvailable,
    PoolInfo,
    SharedState,
    Snapshot,
    WorkerInfo,
    plan_selection,
    select_worker,
    tokens_of,
)
from rentahal.errors import BrokerError

NOW = 1_000_000.0


def worker(name, *, realm="", query_type="chat", topics=None, wire_format="openai", **fields) -> WorkerInfo:
    words = tuple(
        (topic, tuple(tuple(sorted(tokens_of(keyword))) for keyword in keywords)) for topic, keywords in (topics or {}).items()
    )
    return WorkerInfo(
        id=abs(hash(name)) % 10_000, name=name, query_type=query_type, realm=realm, address="127.0.0.1:1",
        wire_format=wire_format, topics=words, **fields,
    )


def pool(name="$CHAT", members=(), *, strategy="health", realm="", pool_id=1, weights=(), query_type="chat") -> PoolInfo:
    return PoolInfo(
        id=pool_id, name=name, realm=realm, query_type=query_type, strategy=strategy,
        members=tuple(sorted(member.name for member in members)), weights=weights,
    )


def pick(workers, pools=(), *, state=None, realm="$CHAT", model_name="", model_type="", prompt="", rng=None, **options):
    snapshot = Snapshot.build(workers, pools)
    plan = plan_selection(snapshot, query_type="chat", realm=realm, model_name=model_name, model_type=model_type)
    return select_worker(plan, state or SharedState(now=NOW), prompt=prompt, rng=rng or random.Random(7), **options)


def state_with(**members) -> SharedState:
    return SharedState(now=NOW, members={name: MemberState(**fields) for name, fields in members.items()})


def scores(tickets=None, **health) -> SharedState:
    """Return the shared state where each named worker has the given health score."""
    return SharedState(
        now=NOW, members={name: MemberState(health_score=score) for name, score in health.items()}, tickets=tickets or {}
    )


def test_health_strategy_picks_the_highest_score():
    members = [worker("a"), worker("b"), worker("c")]

    assert pick(members, [pool(members=members)], state=scores(a=60, b=90, c=80)).worker.name == "b"


def test_health_ties_are_spread_at_random_not_given_to_the_first():
    members = [worker("a"), worker("b"), worker("c")]
    rng = random.Random(1)

    chosen = Counter(pick(members, [pool(members=members)], rng=rng).worker.name for _ in range(300))

    assert set(chosen) == {"a", "b", "c"}


def test_round_robin_cycles_through_members_by_ticket():
    members = [worker("c"), worker("a"), worker("b")]
    pools = [pool(members=members, strategy="round_robin")]

    names = [pick(members, pools, state=SharedState(now=NOW, tickets={1: ticket})).worker.name for ticket in range(1, 7)]

    assert names == ["a", "b", "c", "a", "b", "c"]


def test_least_busy_picks_the_member_with_fewest_queries_in_flight():
    members = [worker("a"), worker("b"), worker("c")]
    state = state_with(a={"in_flight": 3}, b={"in_flight": 1}, c={"in_flight": 2})

    assert pick(members, [pool(members=members, strategy="least_busy")], state=state).worker.name == "b"


def test_least_busy_breaks_ties_at_random():
    members = [worker("a"), worker("b"), worker("c")]
    state = state_with(a={"in_flight": 2}, b={"in_flight": 0}, c={"in_flight": 0})
    rng = random.Random(3)

    chosen = Counter(pick(members, [pool(members=members, strategy="least_busy")], state=state, rng=rng).worker.name for _ in range(200))

    assert set(chosen) == {"b", "c"}


def test_random_strategy_reaches_every_member():
    members = [worker("a"), worker("b"), worker("c")]
    rng = random.Random(5)

    chosen = Counter(pick(members, [pool(members=members, strategy="random")], rng=rng).worker.name for _ in range(200))

    assert set(chosen) == {"a", "b", "c"}


def test_weighted_strategy_follows_member_weights():
    members = [worker("a"), worker("b")]
    pools = [pool(members=members, strategy="weighted", weights=(9, 1))]
    rng = random.Random(11)

    chosen = Counter(pick(members, pools, rng=rng).worker.name for _ in range(1000))

    assert chosen["a"] > 4 * chosen["b"] > 0


def test_affinity_keeps_a_conversation_on_its_remembered_member():
    members = [worker("a"), worker("b"), worker("c")]
    state = SharedState(now=NOW, affinity={1: "c"}, members={"c": MemberState(in_flight=5)})

    assert pick(members, [pool(members=members, strategy="affinity")], state=state).worker.name == "c"


def test_affinity_falls_back_to_least_busy_when_its_member_is_cooling():
    members = [worker("a"), worker("b"), worker("c")]
    state = state_with(a={"in_flight": 2}, b={"in_flight": 1}, c={"cooldown_until": NOW + 30, "cooldown_kind": "server"})
    state.affinity = {1: "c"}

    assert pick(members, [pool(members=members, strategy="affinity")], state=state).worker.name == "b"


def test_affinity_spreads_new_conversations_evenly_over_idle_members():
    members = [worker("a"), worker("b"), worker("c")]
    affinity = [pool(members=members, strategy="affinity")]

    chosen = Counter(
        pick(members, affinity, state=SharedState(now=NOW, affinity_key=f"alice:conversation-{n}")).worker.name
        for n in range(300)
    )

    assert set(chosen) == {"a", "b", "c"}
    assert min(chosen.values()) >= 70


def test_affinity_settles_a_conversation_without_a_remembered_member_on_the_same_one_each_time():
    members = [worker("a"), worker("b"), worker("c")]
    affinity = [pool(members=members, strategy="affinity")]

    chosen = {
        pick(members, affinity, state=SharedState(now=NOW, affinity_key="alice:trip"), rng=random.Random(seed)).worker.name
        for seed in range(20)
    }

    assert len(chosen) == 1


def test_affinity_settles_a_new_conversation_on_a_less_busy_member():
    members = [worker("a"), worker("b"), worker("c")]
    affinity = [pool(members=members, strategy="affinity")]
    state = state_with(a={"in_flight": 3}, b={"in_flight": 0}, c={"in_flight": 2})

    chosen = {pick(members, affinity, state=dataclasses.replace(state, affinity_key=f"k{n}")).worker.name for n in range(20)}

    assert chosen == {"b"}


@pytest.mark.parametrize(("model_type", "wire_format"), [("claude", "anthropic"), ("huggingface", "huggingface")])
def test_a_hosted_model_type_is_served_only_by_its_providers_members(model_type, wire_format):
    members = [worker("local"), worker("hosted", wire_format=wire_format)]

    chosen = pick(members, [pool(members=members)], state=scores(local=100, hosted=40), model_type=model_type)

    assert chosen.worker.name == "hosted"


def test_a_hosted_model_type_is_never_served_by_a_named_local_worker():
    with pytest.raises(NoWorkerAvailable) as refusal:
        pick([worker("local"), worker("claude", wire_format="anthropic")], model_name="local", model_type="claude")

    assert refusal.value.message == "No chat worker for model type claude is available."


def test_a_hosted_model_type_whose_members_are_all_down_says_which_model_type_waits():
    members = [worker("local"), worker("claude", wire_format="anthropic")]
    state = state_with(claude={"cooldown_until": NOW + 30, "cooldown_kind": "auth"})

    with pytest.raises(NoWorkerAvailable) as refusal:
        pick(members, [pool(members=members)], state=state, model_type="claude")

    assert refusal.value.message == (
        "No chat worker for model type claude is available: pool $CHAT has no available member "
        "(claude is cooling down for 30s); claude is cooling down for 30s."
    )


def test_latency_prefers_the_member_with_the_lowest_expected_latency():
    members = [worker("a"), worker("b"), worker("c")]
    state = state_with(
        a={"latency": 0.5, "success": 1.0}, b={"latency": 0.2, "success": 1.0}, c={"latency": 0.1, "success": 0.1}
    )

    assert pick(members, [pool(members=members, strategy="latency")], state=state, explore=0.0).worker.name == "b"


def test_latency_tries_a_member_with_no_measurements_first():
    members = [worker("a"), worker("b")]
    state = state_with(a={"latency": 0.05, "success": 1.0})

    assert pick(members, [pool(members=members, strategy="latency")], state=state, explore=0.0).worker.name == "b"


def test_latency_still_explores_a_slow_member_now_and_then():
    members = [worker("fast"), worker("recovered")]
    state = state_with(fast={"latency": 0.1, "success": 1.0}, recovered={"latency": 5.0, "success": 0.2})
    rng = random.Random(2)

    chosen = Counter(
        pick(members, [pool(members=members, strategy="latency")], state=state, rng=rng, explore=0.1).worker.name
        for _ in range(300)
    )

    assert chosen["fast"] > chosen["recovered"] > 0


def test_auto_with_two_healthy_members_takes_the_healthiest():
    members = [worker("a"), worker("b")]

    selection = pick(members, [pool(members=members, strategy="auto")], state=scores(a=50, b=60, tickets={1: 1}))

    assert (selection.worker.name, selection.strategy) == ("b", "health")


def test_auto_counts_only_healthy_members_towards_the_small_pool_rule():
    members = [worker("a"), worker("b"), worker("c", is_blacklisted=True)]

    selection = pick(members, [pool(members=members, strategy="auto")], state=scores(a=50, b=60))

    assert (selection.worker.name, selection.strategy) == ("b", "health")


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        # Population variance 441, above 400 → health.
        ((59, 101, 59, 101), "health"),
        # Variance exactly 400 is not "> 400"; the average, 80, is not stressed → round robin.
        ((60, 100, 60, 100), "round_robin"),
        # Average just under 70 with no spread → least busy.
        ((69.5, 69.5, 69.5, 69.5), "least_busy"),
        # Average exactly 70 is not "< 70" → round robin.
        ((70, 70, 70, 70), "round_robin"),
        # Healthy and even → round robin.
        ((100, 95, 90, 95), "round_robin"),
    ],
    ids=["variance-above-400", "variance-exactly-400", "average-below-70", "average-exactly-70", "healthy"],
)
def test_auto_resolves_by_its_thresholds(health, expected):
    members = [worker(name) for name in "abcd"]
    state = scores(tickets={1: 1}, **dict(zip("abcd", health)))

    selection = pick(members, [pool(members=members, strategy="auto")], state=state)

    assert selection.strategy == expected


def test_blacklisted_and_cooling_members_are_skipped():
    members = [worker("a", is_blacklisted=True), worker("b"), worker("c")]
    state = state_with(b={"cooldown_until": NOW + 5, "cooldown_kind": "server", "health_score": 90}, c={"health_score": 80})

    assert pick(members, [pool(members=members)], state=state).worker.name == "c"


def test_a_member_the_health_rules_blacklisted_is_skipped_whatever_its_configuration_says():
    members = [worker("a"), worker("b")]
    state = state_with(a={"health_score": 0, "is_blacklisted": True}, b={"health_score": 10})

    assert pick(members, [pool(members=members)], state=state).worker.name == "b"


def test_without_a_pool_a_worker_the_health_rules_blacklisted_is_no_last_resort():
    state = state_with(a={"cooldown_until": NOW + 5, "cooldown_kind": "server", "is_blacklisted": True})

    with pytest.raises(NoWorkerAvailable, match=r"a is blacklisted"):
        pick([worker("a")], state=state)


def test_a_member_whose_cooldown_has_passed_is_chosen_again():
    members = [worker("a"), worker("b")]
    state = state_with(a={"cooldown_until": NOW - 1, "cooldown_kind": "server"}, b={"health_score": 90})

    assert pick(members, [pool(members=members)], state=state).worker.name == "a"


def test_a_member_at_its_concurrency_cap_is_skipped():
    members = [worker("a", max_concurrency=1), worker("b")]
    state = state_with(a={"in_flight": 1}, b={"health_score": 50})

    assert pick(members, [pool(members=members)], state=state).worker.name == "b"


def test_a_pool_whose_members_are_all_out_says_so():
    members = [worker("a", is_blacklisted=True), worker("b")]
    state = state_with(b={"cooldown_until": NOW + 12, "cooldown_kind": "auth"})

    with pytest.raises(NoWorkerAvailable) as error:
        pick(members, [pool(members=members)], state=state, model_name="$CHAT")

    assert error.value.message == (
        "No chat worker is available: pool $CHAT has no available member "
        "(a is blacklisted, b is cooling down for 12s)."
    )


def test_a_pool_whose_members_are_all_busy_is_reported_as_busy():
    members = [worker("a", max_concurrency=1)]

    with pytest.raises(NoWorkerAvailable) as error:
        pick(members, [pool(members=members)], state=state_with(a={"in_flight": 1}), model_name="$CHAT")

    assert error.value.is_busy


def test_an_unknown_alias_is_named_in_the_error():
    with pytest.raises(NoWorkerAvailable, match=r"No pool alias named \$NOPE exists."):
        pick([worker("a")], model_name="$NOPE")


def test_no_worker_of_the_type_keeps_the_classic_message():
    with pytest.raises(NoWorkerAvailable, match=r"^No chat worker is available\.$"):
        pick([worker("v", query_type="vision")])


def test_no_worker_available_is_refused_with_the_no_worker_code_and_503():
    with pytest.raises(BrokerError) as error:
        pick([worker("v", query_type="vision")])

    assert (error.value.code, error.value.http_status) == ("no_worker", 503)


@pytest.mark.parametrize(
    ("topics_prompt", "expected"),
    [
        ("How do I write a Python decorator?", {"coder"}),
        ("PYTHON, please!", {"coder"}),
        ("Translate this poem", {"coder", "poet", "plain"}),
    ],
    ids=["match", "case-and-punctuation", "no-match-falls-back-to-all"],
)
def test_specializations_narrow_the_candidates(topics_prompt, expected):
    members = [
        worker("coder", topics={"code": ["python", "django"]}),
        worker("poet", topics={"verse": ["sonnet"]}),
        worker("plain"),
    ]
    rng = random.Random(4)

    chosen = {pick(members, [pool(members=members, strategy="random")], prompt=topics_prompt, rng=rng).worker.name for _ in range(60)}

    assert chosen == expected


def test_a_specialist_that_is_cooling_leaves_the_others_to_serve():
    members = [worker("coder", topics={"code": ["python"]}), worker("plain")]
    state = state_with(coder={"cooldown_until": NOW + 5, "cooldown_kind": "server"})

    assert pick(members, [pool(members=members)], state=state, prompt="python question").worker.name == "plain"


def test_multi_word_keywords_need_all_their_words():
    members = [worker("ml", topics={"ml": ["machine learning"]}), worker("plain")]
    pools = [pool(members=members)]

    assert pick(members, pools, state=scores(ml=99), prompt="machine learning basics").worker.name == "ml"
    assert pick(members, pools, state=scores(ml=99), prompt="a washing machine").worker.name == "plain"


def test_model_name_naming_a_worker_is_honoured():
    members = [worker("a"), worker("b")]

    selection = pick(members, [pool(members=members)], state=scores(b=10), model_name="b")

    assert (selection.worker.name, selection.strategy) == ("b", "named")


def test_without_a_pool_the_healthiest_worker_of_the_type_serves():
    workers = [worker("a"), worker("b"), worker("v", query_type="vision")]

    selection = pick(workers, state=scores(a=40, b=70))

    assert (selection.worker.name, selection.pool) == ("b", None)


def test_without_a_pool_a_lone_worker_cooling_after_a_server_fault_is_still_tried():
    state = state_with(a={"cooldown_until": NOW + 5, "cooldown_kind": "server"})

    assert pick([worker("a")], state=state).worker.name == "a"


def test_without_a_pool_a_rate_limited_worker_is_left_alone():
    state = state_with(a={"cooldown_until": NOW + 5, "cooldown_kind": "rate_limited"})

    with pytest.raises(NoWorkerAvailable, match="a is cooling down for 5s"):
        pick([worker("a")], state=state)


def test_a_worker_that_failed_the_query_is_not_tried_again():
    members = [worker("a"), worker("b")]

    assert pick(members, [pool(members=members)], state=scores(b=50), exclude=frozenset({"a"})).worker.name == "b"


class TestRealms:
    def test_the_pool_of_the_query_realm_comes_first(self):
        here, there = worker("here"), worker("there")
        pools = [pool(members=[there], realm="$OTHER", pool_id=2), pool(members=[here], realm="$CHAT", pool_id=1)]

        selection = pick([here, there], pools)

        assert (selection.worker.name, selection.is_cross_realm) == ("here", False)

    def test_an_empty_realm_pool_borrows_the_same_alias_from_another_realm(self):
        here, there = worker("here", is_blacklisted=True), worker("there", realm="$OTHER")
        pools = [pool(members=[here], realm="$CHAT", pool_id=1), pool(members=[there], realm="$OTHER", pool_id=2)]

        selection = pick([here, there], pools)

        assert (selection.worker.name, selection.source_realm, selection.is_cross_realm) == ("there", "$OTHER", True)

    def test_an_alias_asked_for_by_name_is_found_in_another_realm(self):
        there = worker("there")
        selection = pick([there], [pool("$FAST", [there], realm="$OTHER")], model_name="$FAST")

        assert (selection.worker.name, selection.is_cross_realm) == ("there", True)

    def test_without_pools_a_worker_of_the_realm_beats_a_healthier_foreign_one(self):
        local, foreign = worker("local", realm="$CHAT"), worker("foreign", realm="$OTHER")

        selection = pick([local, foreign], state=scores(local=50))

        assert (selection.worker.name, selection.is_cross_realm) == ("local", False)

    def test_without_pools_a_foreign_worker_serves_when_the_realm_has_none(self):
        selection = pick([worker("foreign", realm="$OTHER")])

        assert (selection.worker.name, selection.source_realm, selection.is_cross_realm) == ("foreign", "$OTHER", True)

    def test_an_any_realm_worker_is_home_everywhere(self):
        selection = pick([worker("anywhere", realm="")])

        assert selection.is_cross_realm is False


def peer_broker(name, *, price=0.01, **fields) -> WorkerInfo:
    return worker(name, wire_format="peer", price=price, **fields)


def test_a_peer_broker_is_not_chosen_while_a_local_worker_of_any_realm_can_serve():
    selection = pick([peer_broker("peer:east:chat", price=0.0), worker("far", realm="$OTHER")], state=scores(far=1))

    assert selection.worker.name == "far"


def test_a_peer_broker_serves_when_no_local_worker_can():
    cooling = state_with(local={"cooldown_until": NOW + 60, "cooldown_kind": "auth"})

    selection = pick([worker("local"), peer_broker("peer:east:chat")], state=cooling)

    assert (selection.worker.name, selection.strategy) == ("peer:east:chat", "peer")


def test_the_cheapest_peer_is_asked_first_then_the_faster():
    cheap, dear = peer_broker("peer:cheap:chat", price=0.01), peer_broker("peer:dear:chat", price=0.05)
    fast, slow = peer_broker("peer:fast:chat"), peer_broker("peer:slow:chat")
    failing = state_with(**{"peer:fast:chat": {"latency": 0.2, "success": 1.0}, "peer:slow:chat": {"latency": 0.2, "success": 0.1}})
    lagging = state_with(**{"peer:fast:chat": {"latency": 0.2, "success": 1.0}, "peer:slow:chat": {"latency": 3.0, "success": 1.0}})

    assert pick([dear, cheap]).worker.name == "peer:cheap:chat"
    assert pick([slow, fast], state=failing).worker.name == "peer:fast:chat"
    assert pick([slow, fast], state=lagging).worker.name == "peer:fast:chat"


def test_a_pool_may_seat_a_peer_beside_local_members():
    local, remote = worker("local"), peer_broker("peer:east:chat")
    chat = pool("$CHAT", [local, remote], strategy="round_robin", realm="$CHAT")

    chosen = {pick([local, remote], [chat], state=scores(tickets={1: ticket})).worker.name for ticket in (1, 2)}

    assert chosen == {"local", "peer:east:chat"}

"""Finishing and failing queries in batches: each query charged once, every total exact."""
import threading
from decimal import Decimal

import pytest
from django.db import IntegrityError, connections, transaction

from accounts.actions.queries import Answer, Failure, accept_query, fail_queries, finish_queries, start_queries
from accounts.actions.users import get_or_create_user
from accounts import billing
from accounts.models import Charge, Query, User
from rentahal import sharding
from rentahal.sharding import ShardMoving, close_fence, shard_for_guid
from tests.shard_helpers import guid_with_prefix

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def user_on(prefix: str) -> User:
    """A user whose guid starts with `prefix` (00, 01 and 02 land on shard0, 1 and 2)."""
    return get_or_create_user(guid_with_prefix(prefix))


def started_queries(user: User, count: int) -> list[Query]:
    queries = [
        accept_query(
            user.guid, query_type="chat", prompt=f"question {number}", model_type="worker_node", model_name="",
            image="", realm="$CHAT",
        )
        for number in range(count)
    ]
    return start_queries([query.pk for query in queries])


def answered(query: Query, result: str = "answer") -> Answer:
    return Answer(query, result=result, result_type="text", worker="fake", processing_time=1.0)


def charges_of(query: Query) -> list[Decimal]:
    return list(Charge.objects.filter(query_id=query.pk).values_list("amount", flat=True))


def test_a_batch_of_finishes_across_shards_charges_each_query_once_and_adds_up_every_total(default_realms):
    users = [user_on(prefix) for prefix in ("00", "01", "02")]
    queries = [query for user, count in zip(users, (3, 1, 2)) for query in started_queries(user, count)]

    finished = finish_queries([answered(query) for query in queries])

    assert [query.status for query in finished] == [Query.Status.DONE] * 6
    for query in finished:
        assert charges_of(query) == [query.cost] and query.cost == billing.cost_of(query.processing_time)
    for user in users:
        user.refresh_from_db()
        own = [query for query in finished if query.user_id == user.pk]
        assert user.query_count == len(own)
        assert user.total_cost == sum(query.cost for query in own)
        assert user.total_query_time == pytest.approx(sum(query.processing_time for query in own))
    totals = billing.system_totals()
    assert (totals["total_queries"], totals["total_cost"], totals["failed_queries"]) == (
        6, sum(query.cost for query in finished), 0
    )


def test_a_rerun_inside_a_batch_charges_nothing(default_realms):
    user = user_on("00")
    done, fresh = started_queries(user, 2)
    finish_queries([answered(done, "first")])

    outcomes = finish_queries([answered(done, "again"), answered(fresh), answered(fresh, "twice")])

    assert outcomes[0] is None and outcomes[2] is None
    assert outcomes[1].result == "answer"
    assert Query.objects.get(pk=done.pk).result == "first"
    assert len(charges_of(done)) == len(charges_of(fresh)) == 1
    user.refresh_from_db()
    assert user.query_count == billing.system_totals()["total_queries"] == 2


def test_a_second_charge_refused_by_the_ledger_does_not_fail_the_rest_of_the_batch(default_realms):
    user = user_on("00")
    first, charged_already, last = started_queries(user, 3)
    # A ledger row the query's status does not show: only the unique constraint stands
    # between this query and a second charge.
    Charge.objects.create(query_id=charged_already.pk, user_id=user.pk, amount=Decimal("1"), processing_time=1.0)

    outcomes = finish_queries([answered(query) for query in (first, charged_already, last)])

    assert isinstance(outcomes[1], IntegrityError)
    assert charges_of(charged_already) == [Decimal("1")]
    assert Query.objects.get(pk=charged_already.pk).status == Query.Status.RUNNING
    assert [outcomes[0].status, outcomes[2].status] == [Query.Status.DONE] * 2
    user.refresh_from_db()
    assert (user.query_count, user.total_cost) == (2, outcomes[0].cost + outcomes[2].cost)


def test_an_answer_the_database_cannot_store_fails_alone(default_realms):
    user = user_on("01")
    good, bad = started_queries(user, 2)

    outcomes = finish_queries([answered(good), answered(bad, "a NUL \x00 byte")])

    assert outcomes[0].status == Query.Status.DONE and charges_of(good) == [outcomes[0].cost]
    assert isinstance(outcomes[1], Exception)
    assert Query.objects.get(pk=bad.pk).status == Query.Status.RUNNING and charges_of(bad) == []


def test_a_batch_of_failures_records_each_once_and_charges_nothing(default_realms):
    first, second = started_queries(user_on("00"), 1) + started_queries(user_on("02"), 1)

    outcomes = fail_queries(
        [Failure(first.pk, "no worker"), Failure(second.pk, "timed out"), Failure(first.pk, "again")]
    )

    assert [outcome.error if outcome else None for outcome in outcomes] == ["no worker", "timed out", None]
    assert Charge.objects.count() == 0
    totals = billing.system_totals()
    assert (totals["failed_queries"], totals["total_queries"], totals["total_cost"]) == (2, 0, 0)


def test_a_closed_fence_fails_only_the_moving_prefixs_queries(default_realms, monkeypatch):
    staying, moving = started_queries(user_on("00"), 1) + started_queries(user_on("01"), 1)
    monkeypatch.setattr(sharding, "WRITER_FENCE_TIMEOUT_MS", 200)
    outcomes = []

    def finish():
        try:
            outcomes.extend(finish_queries([answered(staying), answered(moving)]))
        finally:
            connections.close_all()

    with transaction.atomic(using="default"):
        close_fence("01", timeout_ms=1000)
        writer = threading.Thread(target=finish)
        writer.start()
        writer.join()

    assert outcomes[0].status == Query.Status.DONE
    assert isinstance(outcomes[1], ShardMoving)
    assert Query.objects.using(shard_for_guid(moving.user_id)).get(pk=moving.pk).status == Query.Status.RUNNING

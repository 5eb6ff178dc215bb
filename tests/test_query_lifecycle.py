"""What happens to a query beyond the happy path: vision uploads in chunks, reruns,
lost jobs found by the reconciler."""
import base64
import datetime
import itertools
from collections import Counter

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.utils import timezone

from accounts.actions.queries import (
    Answer, Failure, accept_query, fail_queries, finish_queries, insert_statement, start_queries,
)
from accounts import billing
from accounts.models import Charge, Query
from realms.frames import QuerySubmission
from realms import lifecycle
from realms.reconcile import reconcile_queries
from rentahal.sharding import shard_for_guid

pytestmark = pytest.mark.django_db(transaction=True)

IMAGE = base64.b64encode(bytes(range(256)) * 12).decode()


async def test_vision_image_sent_in_chunks_is_reassembled_and_answered(rq_worker, fake_server, register_worker, alice, connect):
    await sync_to_async(register_worker)(fake_server, "predict", query_type="vision")
    client = await connect(alice.guid)
    pieces = [IMAGE[i : i + 1024] for i in range(0, len(IMAGE), 1024)]

    for index, piece in enumerate(pieces):
        await client.send(
            {"type": "vision_chunk", "chunk_id": index, "total_chunks": len(pieces), "chunk_data": piece,
             "image_id": "img-1", "prompt": "what is this", "query_type": "vision", "model_type": "worker_node", "model_name": ""}
        )
    frames = await client.receive_until("query_result")

    types = [frame["type"] for frame in frames]
    assert types[: len(pieces)] == ["vision_chunk_received"] * (len(pieces) - 1) + ["vision_upload_complete"]
    assert types[len(pieces)] == "queue_update"
    assert frames[-1]["result"] == "echo: what is this [image: 3072 bytes]"


async def test_vision_chunk_with_missing_fields_is_refused(alice, connect):
    client = await connect(alice.guid)

    await client.send({"type": "vision_chunk", "chunk_id": 0, "image_id": "x"})

    assert await client.receive() == {
        "type": "error",
        "code": "bad_chunk",
        "message": "A vision_chunk needs chunk_id, total_chunks, chunk_data and image_id.",
    }


async def test_rerun_of_a_finished_query_charges_nothing(rq_worker, fake_server, register_worker, alice, connect):
    await sync_to_async(register_worker)(fake_server, "openai")
    client = await connect(alice.guid)
    await client.send({"type": "submit_query", "query": {"prompt": "once", "query_type": "chat"}})
    query_id = (await client.receive_until("query_result"))[-1]["query_id"]

    outcome = await lifecycle.run_query(query_id)

    assert outcome == "already finished"
    assert await sync_to_async(Charge.objects.filter(query_id=query_id).count)() == 1


def accept_without_enqueueing(user, prompt: str) -> Query:
    """Simulate a crash between the commit of the query row and its enqueue."""
    query = accept_query(
        user.guid, query_type="chat", prompt=prompt, model_type="worker_node", model_name="", image="",
        realm="$CHAT",
    )
    Query.objects.filter(pk=query.pk).update(accepted_at=timezone.now() - datetime.timedelta(minutes=5))
    return query


async def test_reconciler_re_enqueues_a_query_whose_job_was_lost(rq_worker, fake_server, register_worker, alice, connect):
    await sync_to_async(register_worker)(fake_server, "openai")
    client = await connect(alice.guid)
    query = await sync_to_async(accept_without_enqueueing)(alice, "lost and found")

    counts = await sync_to_async(reconcile_queries)()
    result = (await client.receive_until("query_result"))[-1]

    assert counts == {"requeued": 1, "failed": 0}
    assert result["query_id"] == str(query.pk)
    assert result["result"] == "echo: lost and found"


def test_reconciler_fails_a_query_lost_too_often(default_realms, alice):
    query = accept_without_enqueueing(alice, "cursed")
    Query.objects.filter(pk=query.pk).update(attempts=3)

    counts = reconcile_queries()

    query.refresh_from_db()
    assert counts == {"requeued": 0, "failed": 1}
    assert (query.status, query.error) == (Query.Status.FAILED, "it was lost 3 times")
    assert Charge.objects.count() == 0


def test_reconciler_leaves_recent_queries_alone(default_realms, alice):
    accept_query(
        alice.guid, query_type="chat", prompt="just now", model_type="worker_node", model_name="", image="",
        realm="$CHAT",
    )

    assert reconcile_queries() == {"requeued": 0, "failed": 0}


def test_accepting_a_query_is_one_statement_on_the_users_shard(default_realms, alice, django_assert_num_queries):
    submission = QuerySubmission(prompt="counted", query_type="chat", model_type="worker_node", model_name="", image="")
    shard = connections[shard_for_guid(alice.guid)]

    # The ban check is in the insert, and one statement needs no BEGIN or COMMIT.
    with django_assert_num_queries(1, connection=shard):
        frame = lifecycle.accept_query(alice.guid, submission)

    stored = Query.objects.get(pk=frame["query_id"])
    assert (frame["type"], frame["realm"], frame["depth"]) == ("queue_update", "$CHAT", 1)
    assert (stored.status, stored.prompt, stored.user_id) == (Query.Status.ACCEPTED, "counted", alice.guid)


def test_the_accepts_statement_is_prepared_once_per_connection(default_realms, alice):
    submission = QuerySubmission(prompt="prepared", query_type="chat", model_type="worker_node", model_name="", image="")
    shard = connections[shard_for_guid(alice.guid)]

    ids = [lifecycle.accept_query(alice.guid, submission)["query_id"] for _ in range(3)]

    with shard.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans + custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
            [f"%INSERT INTO {Query._meta.db_table}%"],
        )
        prepared = cursor.fetchall()
    assert prepared == [(3,)]
    assert Query.objects.filter(pk__in=ids, status=Query.Status.ACCEPTED).count() == 3


def test_the_accepts_generic_plan_finds_free_slots_through_the_slot_indexes(alice):
    # Postgres plans a prepared statement generically after a few runs; the slot search must
    # still prove the partial unique indexes' conditions, or it reads all of a user's rows.
    numbers = itertools.count(1)
    statement = insert_statement().replace("%s", "{}")
    statement = statement.format(*(f"${next(numbers)}" for _ in range(statement.count("{}"))))
    parameters = next(numbers) - 1

    with connections[shard_for_guid(alice.guid)].cursor() as cursor:
        cursor.execute(f"PREPARE accept_plan AS {statement}")
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        cursor.execute(f"EXPLAIN EXECUTE accept_plan({', '.join(['NULL'] * parameters)})")
        plan = "\n".join(row for (row,) in cursor.fetchall())
        cursor.execute("RESET plan_cache_mode")
        cursor.execute("DEALLOCATE accept_plan")

    assert plan.count("using one_unfinished_query_per_slot") == 2
    assert plan.count("using one_queued_query_per_slot") == 2


def submit_without_a_socket(user, prompt: str) -> str:
    submission = QuerySubmission(prompt=prompt, query_type="chat", model_type="worker_node", model_name="", image="")
    return lifecycle.accept_query(user.guid, submission)["query_id"]


async def test_a_served_chat_query_costs_its_job_nine_redis_commands(
    default_realms, fake_server, register_worker, alice, redis_commands
):
    await sync_to_async(register_worker)(fake_server, "predict")
    # The first query of a process loads the pool configuration and Redis's scripts.
    assert await lifecycle.run_query(await sync_to_async(submit_without_a_socket)(alice, "warm up")) == "done"
    query_id = await sync_to_async(submit_without_a_socket)(alice, "counted")

    with redis_commands() as commands:
        outcome = await lifecycle.run_query(query_id)

    assert outcome == "done"
    # For the selection, the state read (which also checks the configuration's version and
    # that nobody waits in line) and the lease, two scripts. The lease's release and the
    # outcome go with the attempt's batch (one script), the realm's metrics (one pipeline)
    # with the finish's, each on a thread; then the `query_result` push.
    assert Counter(commands) == Counter(
        EVALSHA=3, HINCRBY=2, ZADD=1, ZREMRANGEBYSCORE=1, ZREMRANGEBYRANK=1, PUBLISH=1
    )


def test_a_batch_of_starts_and_a_batch_of_finishes_take_one_statement_each_on_the_shard(
    default_realms, alice, django_assert_num_queries
):
    queries = [accept_without_enqueueing(alice, f"counted {number}") for number in range(5)]
    shard = connections[shard_for_guid(alice.guid)]
    default = connections["default"]

    # No BEGIN or COMMIT on the shard: one statement commits on its own. The prefix's fence
    # on default is BEGIN, the lock, the token read and COMMIT, once per batch.
    with django_assert_num_queries(1, connection=shard), django_assert_num_queries(4, connection=default):
        started = start_queries([query.pk for query in queries])
    with django_assert_num_queries(1, connection=shard), django_assert_num_queries(4, connection=default):
        finished = finish_queries(
            [Answer(query, result=f"answer {number}", result_type="text", worker="fake", processing_time=0.5 + number) for number, query in enumerate(started)]
        )

    alice.refresh_from_db()
    charges = {charge.query_id: charge.amount for charge in Charge.objects.filter(user=alice)}
    for number, (query, answer) in enumerate(zip(queries, finished)):
        stored = Query.objects.get(pk=query.pk)
        assert (stored.status, stored.result, stored.attempts) == (Query.Status.DONE, f"answer {number}", 1)
        assert stored.processing_time == 0.5 + number
        assert answer.cost == stored.cost == charges[query.pk] == billing.cost_of(stored.processing_time)
    assert (alice.query_count, alice.total_cost) == (5, sum(charges.values()))
    assert billing.system_totals()["total_queries"] == 5


def test_finishing_a_finished_query_writes_nothing(default_realms, alice):
    query = accept_without_enqueueing(alice, "twice")
    finish_queries([Answer(query, result="first", result_type="text", worker="fake", processing_time=1.0)])

    [again] = finish_queries([Answer(query, result="second", result_type="text", worker="fake", processing_time=1.0)])
    [failed] = fail_queries([Failure(query.pk, "late")])

    assert again is None and failed is None
    assert Query.objects.get(pk=query.pk).result == "first"
    assert Charge.objects.filter(query_id=query.pk).count() == 1
    assert billing.system_totals()["failed_queries"] == 0

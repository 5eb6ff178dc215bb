"""Recording attempts for the A/B report: queries in flight together share one INSERT."""
import asyncio

import pytest
from asgiref.sync import sync_to_async

from pools import actions
from pools.clients import ModelAnswer, ModelRequest
from pools.dispatch import serve
from pools.models import SelectionOutcome
from pools.selection import Selection, WorkerInfo

pytestmark = pytest.mark.django_db(transaction=True)


def attempt_on(worker: str, number: int) -> actions.Attempt:
    info = WorkerInfo(id=number, name=worker, query_type="chat", realm="", address="127.0.0.1:1", wire_format="openai")
    answer = ModelAnswer(result="hi", time_to_first_byte=0.01)
    return actions.Attempt(Selection(worker=info, pool=None, strategy="direct", realm="$CHAT"), 1, 0.02, lease="no-such-lease", answer=answer)


def test_attempts_recorded_together_take_one_insert(django_assert_num_queries):
    attempts = [attempt_on(f"worker-{number}", number) for number in range(5)]

    # bulk_create's INSERT, inside its BEGIN and COMMIT.
    with django_assert_num_queries(3):
        rows = actions.record_attempts(attempts)

    assert [row.pk is not None for row in rows] == [True] * 5
    assert sorted(SelectionOutcome.objects.values_list("worker", flat=True)) == [f"worker-{n}" for n in range(5)]


def test_a_lone_attempt_takes_one_statement(django_assert_num_queries):
    with django_assert_num_queries(1):
        actions.record_attempts([attempt_on("alone", 1)])

    assert list(SelectionOutcome.objects.values_list("worker", "result")) == [("alone", "ok")]


async def test_queries_served_at_once_each_record_their_attempt(fake_servers):
    server = fake_servers()
    await sync_to_async(actions.add_worker)(name="solo", address=server.url, query_type="chat", wire_format="openai", model="fake")

    served = await asyncio.gather(
        *(serve(ModelRequest(prompt=f"question {n}", query_type="chat"), realm="$CHAT") for n in range(8))
    )

    assert [answer.worker for answer in served] == ["solo"] * 8
    rows = await sync_to_async(list)(SelectionOutcome.objects.values_list("worker", "result", "attempt"))
    assert rows == [("solo", "ok", 1)] * 8

"""Honest billing (docs/protocol.md §4): a query is billed for the service time of the call
that answered it, not for time queued or spent on a failed attempt first."""
import pytest
from asgiref.sync import sync_to_async

from accounts.billing import cost_of
from accounts.models import Charge, Query
from pools import actions as pools
from pools.models import SelectionOutcome, Strategy

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_query_answered_after_a_failed_attempt_is_billed_for_the_answering_attempt_only(
    start_worker, fake_servers, register_worker, alice, connect
):
    # The healthier member fails, slowly; the pool then fails over to the other one.
    broken = await sync_to_async(register_worker)(fake_servers(delay=1.0, failure_rate=1.0), "openai", name="broken")
    good = await sync_to_async(register_worker)(fake_servers(delay=0.2), "openai", name="good", health_score=90)
    await sync_to_async(pools.ensure_pool)(
        "$CHAT", query_type="chat", realm="$CHAT", strategy=Strategy.HEALTH, members=[broken.name, good.name]
    )
    await sync_to_async(start_worker)("--concurrency", "4", "$CHAT")
    client = await connect(alice.guid)

    await client.send({"type": "submit_query", "query": {"prompt": "second time lucky", "query_type": "chat"}})
    result = (await client.receive_until("query_result"))[-1]

    failed = await sync_to_async(SelectionOutcome.objects.get)(worker=broken.name)
    answered = await sync_to_async(SelectionOutcome.objects.get)(worker=good.name)
    query = await sync_to_async(Query.objects.get)(pk=result["query_id"])
    charge = await sync_to_async(Charge.objects.get)(query_id=query.pk)
    assert (failed.result, answered.result, answered.attempt) == ("server", "ok", 2)
    assert result["processing_time"] == query.processing_time == charge.processing_time
    assert query.processing_time == pytest.approx(answered.duration)
    assert query.cost == charge.amount == cost_of(answered.duration)

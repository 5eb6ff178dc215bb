"""Pools through the whole query path: /ws → realm queue → real RQ worker processes → fake
model servers. Fairness across two processes, failover charged once, unknown aliases."""
from collections import Counter

import pytest
from asgiref.sync import sync_to_async
from rq import Worker as RQWorker

from accounts.models import Charge, Query, User
from pools import actions, state
from pools.selection import MAX_HEALTH

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def two_rq_workers(start_worker):
    """Two real RQ worker processes, each running one job at a time, serving every realm."""
    return [start_worker("--name", f"pools-test-{count}", "--concurrency", "1") for count in (1, 2)]


def chat(prompt: str, model_name: str = "") -> dict:
    return {"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat", "model_type": "worker_node", "model_name": model_name}}


@sync_to_async
def pool_of(servers, *, strategy: str, health_scores=None) -> list[str]:
    names = []
    for index, server in enumerate(servers):
        name = f"member-{index}"
        actions.add_worker(name=name, address=server.url, query_type="chat", wire_format="openai", model="fake")
        if health_scores:
            state.change_health(name, health_scores[index] - MAX_HEALTH)
        names.append(name)
    actions.create_pool("$CHAT", query_type="chat", members=names, strategy=strategy)
    return names


async def results_of(client, count: int) -> list[dict]:
    results = []
    while len(results) < count:
        frame = (await client.receive_until("query_result", timeout=30))[-1]
        results.append(frame)
    return results


@pytest.mark.parametrize("strategy", ["round_robin", "least_busy"])
async def test_two_worker_processes_share_a_pool_fairly(strategy, two_rq_workers, fake_servers, alice, connect, clean_redis):
    servers = [fake_servers(delay=0.2), fake_servers(delay=0.2)]
    names = await pool_of(servers, strategy=strategy)
    client = await connect(alice.guid)

    for number in range(8):
        await client.send(chat(f"question {number}"))
    served = Counter(frame["worker"] for frame in await results_of(client, 8))

    if strategy == "round_robin":
        assert served == {names[0]: 4, names[1]: 4}
    else:
        assert min(served[name] for name in names) >= 3
    assert all(view["in_flight"] == 0 for view in state.member_views(names).values())
    processes = await sync_to_async(RQWorker.all)(connection=clean_redis)
    assert all(process.successful_job_count >= 1 for process in processes)


async def test_a_query_whose_member_fails_is_answered_by_another_and_charged_once(rq_worker, fake_servers, alice, connect):
    broken, working = fake_servers(failure_rate=1.0), fake_servers()
    names = await pool_of([broken, working], strategy="health", health_scores=[100, 50])
    client = await connect(alice.guid)

    await client.send(chat("still there?"))
    frames = await client.receive_until("query_result")

    assert [frame["type"] for frame in frames if frame["type"] == "error"] == []
    assert frames[-1]["worker"] == names[1]
    assert await sync_to_async(Charge.objects.count)() == 1
    query = await sync_to_async(Query.objects.get)(pk=frames[-1]["query_id"])
    assert (query.status, query.worker) == (Query.Status.DONE, names[1])
    assert (await sync_to_async(User.objects.get)(pk=alice.guid)).query_count == 1


async def test_a_query_for_an_alias_that_does_not_exist_gets_an_error_naming_it(rq_worker, fake_servers, alice, connect):
    await pool_of([fake_servers()], strategy="health")
    client = await connect(alice.guid)

    await client.send(chat("hello", model_name="$NOWHERE"))
    error = (await client.receive_until("error"))[-1]

    assert error["message"] == "Query failed: No pool alias named $NOWHERE exists."

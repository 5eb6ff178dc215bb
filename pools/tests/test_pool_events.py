"""Changes to workers and pools are published on the `events.pools` group once committed,
for dashboards and agent tools that subscribe (rentahal.pushes)."""
import asyncio

import pytest
from channels.db import database_sync_to_async

from pools import actions
from rentahal.errors import Invalid
from rentahal.pushes import POOL_EVENTS

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def subscriber(subscribe):
    return await subscribe(POOL_EVENTS)


async def test_a_worker_saved_and_removed_is_published(subscriber):
    await database_sync_to_async(actions.add_worker)(name="alpha", address="127.0.0.1:1", query_type="chat")
    await database_sync_to_async(actions.remove_worker)("alpha")

    assert await subscriber() == {"type": "worker.changed", "op": "saved", "name": "alpha", "by": "system"}
    assert await subscriber() == {"type": "worker.changed", "op": "deleted", "name": "alpha", "by": "system"}


async def test_a_pool_created_changed_and_deleted_is_published_with_who_did_it(subscriber, admin_user):
    await database_sync_to_async(actions.add_worker)(name="alpha", address="127.0.0.1:1", query_type="chat")
    await subscriber()

    pool = await database_sync_to_async(actions.create_pool)("$CHAT", query_type="chat", members=["alpha"], acting_user=admin_user)
    pool.strategy = "least_busy"
    await database_sync_to_async(actions.save_pool)(pool, acting_user=admin_user)
    await database_sync_to_async(actions.delete_pool)(pool, acting_user=admin_user)

    saved = {"type": "pool.changed", "op": "saved", "name": "$CHAT", "realm": "", "by": "staff admin"}
    created = {**saved, "op": "created", "added": ["alpha"], "removed": []}
    assert [await subscriber() for _ in range(3)] == [created, saved, {**saved, "op": "deleted"}]


async def test_a_pool_scaled_names_the_members_added_and_removed(subscriber):
    for name in ("alpha", "beta"):
        await database_sync_to_async(actions.add_worker)(name=name, address="127.0.0.1:1", query_type="chat")
    pool = await database_sync_to_async(actions.create_pool)("$CHAT", query_type="chat", members=["alpha"])
    for _ in range(3):
        await subscriber()

    await database_sync_to_async(actions.save_pool)(pool, members=["beta"])

    event = await subscriber()
    assert (event["op"], event["added"], event["removed"]) == ("scaled", ["beta"], ["alpha"])


async def test_a_refused_pool_publishes_nothing(subscriber):
    with pytest.raises(Invalid):
        await database_sync_to_async(actions.create_pool)("$CHAT", query_type="chat", members=["ghost"])

    with pytest.raises(asyncio.TimeoutError):
        await subscriber()

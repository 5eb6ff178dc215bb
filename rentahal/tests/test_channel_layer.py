"""The channel layer pipelines publishes: many senders at once, each one's frames in order."""
import asyncio

import pytest
import redis.exceptions
from channels.layers import get_channel_layer

from rentahal.channel_layer import PipelinedPubSubChannelLayer


async def test_frames_sent_at_once_by_many_senders_all_arrive_and_each_senders_in_order():
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("layer-test", channel)
    senders, frames_each = 40, 25

    async def send_all(sender: int) -> None:
        for number in range(frames_each):
            await layer.group_send("layer-test", {"type": "send.frame", "sender": sender, "number": number})

    try:
        await asyncio.gather(*(send_all(sender) for sender in range(senders)))
        received = [await asyncio.wait_for(layer.receive(channel), timeout=5) for _ in range(senders * frames_each)]
    finally:
        await layer.group_discard("layer-test", channel)

    for sender in range(senders):
        assert [frame["number"] for frame in received if frame["sender"] == sender] == list(range(frames_each))


async def test_every_sender_of_a_batch_gets_the_error_when_redis_is_unreachable():
    layer = PipelinedPubSubChannelLayer(hosts=[{"address": "redis://127.0.0.1:1"}], prefix="unreachable")

    outcomes = await asyncio.gather(
        *(layer.group_send("nobody", {"type": "send.frame", "n": n}) for n in range(5)), return_exceptions=True
    )

    assert all(isinstance(outcome, redis.exceptions.ConnectionError) for outcome in outcomes), outcomes
    await layer.flush()


async def test_a_sender_cancelled_while_its_publish_waits_does_not_stop_the_others():
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("layer-cancel", channel)
    try:
        first = asyncio.ensure_future(layer.group_send("layer-cancel", {"type": "send.frame", "n": 1}))
        cancelled = asyncio.ensure_future(layer.group_send("layer-cancel", {"type": "send.frame", "n": 2}))
        await asyncio.sleep(0)
        cancelled.cancel()
        await first
        await layer.group_send("layer-cancel", {"type": "send.frame", "n": 3})
        numbers = set()
        while 3 not in numbers:
            numbers.add((await asyncio.wait_for(layer.receive(channel), timeout=5))["n"])
    finally:
        await layer.group_discard("layer-cancel", channel)

    assert {1, 3} <= numbers
    with pytest.raises(asyncio.CancelledError):
        await cancelled

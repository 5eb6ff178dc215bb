"""The channel layer: channels-redis's pub/sub layer, with publishes pipelined.

channels-redis 4.3.0 sends each `group_send` under a per-process lock
(`RedisSingleShardConnection.publish`): one PUBLISH round trip at a time, each waiting for
its own turn of a busy event loop. A realm worker pushes two or three frames per query for
hundreds of queries in flight, so its pushes queued behind that lock: at 32 clients a push
waited 60 ms (p50) for a round trip of well under one, most of a query's time in the broker
(bench/README.md, session 6). Here the publishes made while a batch is on the wire go
together in the next one, as one pipeline; a lone publish goes at once, so nothing waits for
company. Each sender keeps the order in which its publishes were made, as the lock did.
"""
import asyncio

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close


class PipelinedShardConnection(RedisSingleShardConnection):
    """A shard connection whose publishes share pipelines instead of taking turns."""

    def __init__(self, host, channel_layer):
        super().__init__(host, channel_layer)
        self._outbox: list[tuple[str, bytes, asyncio.Future]] = []
        self._sender: asyncio.Task | None = None

    async def publish(self, channel, message):
        sent = asyncio.get_running_loop().create_future()
        self._outbox.append((channel, message, sent))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_outbox())
        await sent

    async def _send_outbox(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                self._ensure_redis()
                async with self._redis.pipeline(transaction=False) as pipeline:
                    for channel, message, _ in batch:
                        pipeline.publish(channel, message)
                    await pipeline.execute()
            except Exception as exc:  # noqa: BLE001 - every publisher of the batch gets the error
                for _, _, sent in batch:
                    if not sent.done():
                        sent.set_exception(exc)
            else:
                for _, _, sent in batch:
                    if not sent.done():
                        sent.set_result(None)


class PipelinedPubSubLoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shards = [PipelinedShardConnection(shard.host, self) for shard in self._shards]


class PipelinedPubSubChannelLayer(RedisPubSubChannelLayer):
    """`channels_redis.pubsub.RedisPubSubChannelLayer` with `PipelinedShardConnection`s; the
    same configuration, wire format and delivery (at most once)."""

    def _get_layer(self):
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = self._layers[loop] = PipelinedPubSubLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
            return layer

"""The classic RENT-A-HAL WebSocket on /ws (docs/protocol.md §1)."""
import logging
import uuid

import orjson
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from accounts.actions import keys
from accounts.actions.queries import previous_queries
from accounts.actions import search
from accounts.actions.users import (
    GUID_COOKIE, claim_sysop, find_user, get_or_create_user, normalise_guid, set_banned, set_nickname,
)
from pools import actions as pools
from realms import actions as realm_actions
from realms import chunks, lifecycle
from realms.frames import parse_client_id, parse_speech_to_text, parse_submission, parse_text_to_speech, require_str
from realms.routing import home_realm_of
from realms.sysop import record_presence, sysop_frames
from rentahal.db_threads import on_db_thread
from rentahal.errors import STORE_OUTAGES, BrokerError, Forbidden, error_frame, temporarily_unavailable
from rentahal.metrics import record_connection
from rentahal.pushes import BROADCAST_GROUP, SYSOP_GROUP, user_group

logger = logging.getLogger(__name__)

# The registered WebSocket close code "Try Again Later" (IANA's WebSocket Close Code Number
# Registry): the handshake met a Redis or Postgres outage (docs/protocol.md §1).
TRY_AGAIN_LATER = 1013
# What a `create_api_key` frame may set (accounts.actions.keys.parse_limits checks them).
KEY_LIMIT_FIELDS = ("name", "requests_per_minute", "max_in_flight", "allowed_models", "daily_budget", "total_budget")


def banned() -> Forbidden:
    return Forbidden("You are banned from this service.")


class QueryConsumer(AsyncJsonWebsocketConsumer):
    """One browser tab. Every tab of a user joins the user's group, so each sees every result."""

    user = None
    home_realm = None
    is_counted_online = False

    async def __call__(self, scope, receive, send):
        """Serve the socket. Channels makes the socket's channel on the layer before it reads
        the handshake; when Redis is down that fails, and the handshake is answered as
        `connect` answers an outage instead of with daphne's HTTP 500."""
        try:
            await super().__call__(scope, receive, send)
        except STORE_OUTAGES as exc:
            if getattr(self, "channel_name", None) is not None:
                raise
            logger.warning("Redis unavailable at a socket's handshake: %s", exc)
            if (await receive())["type"] == "websocket.connect":
                self.base_send = send
                await self.accept()
                await self.close_for_outage()

    async def connect(self):
        await self.accept()
        try:
            await self.greet()
        except STORE_OUTAGES as exc:
            logger.warning("store unavailable while greeting a socket: %s", exc)
            await self.close_for_outage()

    async def close_for_outage(self):
        """Tell the client to come back, and close: a socket that could not join its groups would miss its results."""
        await self.send_json(error_frame(temporarily_unavailable()))
        await self.close(code=TRY_AGAIN_LATER)

    async def greet(self):
        guid = normalise_guid(self.scope.get("cookies", {}).get(GUID_COOKIE))
        if guid is None:
            guid = str(uuid.uuid4())
            await self.send_json({"type": "set_cookie", "name": GUID_COOKIE, "value": guid})
        self.user = await on_db_thread(get_or_create_user)(guid)
        if self.user.is_banned:
            await self.send_json(error_frame(banned()))
            await self.close(code=4003)
            return
        await self.channel_layer.group_add(user_group(guid), self.channel_name)
        await self.channel_layer.group_add(BROADCAST_GROUP, self.channel_name)
        record_presence(guid, 1)
        self.is_counted_online = True
        await self.follow_sysop_alerts()
        await self.join_home_realm(guid)
        await self.send_user_info()
        await self.send_previous_queries()
        await self.send_worker_update()
        # Hugging Face workers are listed in worker_update (wire_format "huggingface"); this
        # empty frame keeps classic clients' panels drawn.
        await self.send_json({"type": "huggingface_update", "models": []})

    async def dispatch(self, message):
        """Run the message's handler, without channels' hop to its one sync thread per message
        to close stale connections: this consumer's database calls run on
        `rentahal.db_threads`, which look after their own connections."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        try:
            await handler(message)
        except STORE_OUTAGES as exc:
            # Only a push can get here (frames, the handshake and the goodbye answer their own
            # outages); one that must re-read the user (`user_changed`) and cannot would leave
            # the socket acting on stale rights, so the client is sent to reconnect instead.
            logger.warning("store unavailable for a push (%s) to a socket: %s", message["type"], exc)
            await self.close_for_outage()

    async def disconnect(self, code):
        try:
            await self.leave_groups()
        except STORE_OUTAGES as exc:
            # A group left now may stay subscribed on the layer's connection with no socket
            # in it; the layer drops what reaches it.
            logger.warning("Redis unavailable while a socket left its groups: %s", exc)

    async def leave_groups(self):
        if self.is_counted_online:
            record_presence(self.user.guid, -1)
            self.is_counted_online = False
        if self.user is not None:
            await self.channel_layer.group_discard(user_group(self.user.guid), self.channel_name)
            await self.channel_layer.group_discard(BROADCAST_GROUP, self.channel_name)
            await self.channel_layer.group_discard(SYSOP_GROUP, self.channel_name)
        if self.home_realm is not None:
            await self.channel_layer.group_discard(self.home_realm.group_name, self.channel_name)
            record_connection(self.home_realm.name, -1)
            self.home_realm = None

    async def follow_sysop_alerts(self) -> None:
        """Be in the sysops' group (`worker_alert`, `realm_alert`) exactly while the user is a sysop."""
        if self.user.is_sysop:
            await self.channel_layer.group_add(SYSOP_GROUP, self.channel_name)
        else:
            await self.channel_layer.group_discard(SYSOP_GROUP, self.channel_name)

    async def join_home_realm(self, guid: str) -> None:
        """Count this socket in the user's home realm and join its broadcast group, so a sysop can message one realm's users."""
        try:
            realm = await on_db_thread(home_realm_of)(guid)
        except BrokerError:
            return
        await self.channel_layer.group_add(realm.group_name, self.channel_name)
        record_connection(realm.name, 1)
        self.home_realm = realm

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        """Handle one frame; any refusal on the way is answered with an `error` frame
        (`rentahal.errors.error_frame`) and the socket stays open."""
        raw = text_data if text_data is not None else bytes_data
        if raw is None or self.user is None:
            return
        try:
            await self.receive_json(decode_frame(raw))
        except BrokerError as exc:
            logger.info("refused a frame from %s: %s %s", self.user.guid, exc.code, exc.message)
            await self.send_json(error_frame(exc))
        except STORE_OUTAGES as exc:
            logger.warning("store unavailable for a frame from %s: %s", self.user.guid, exc)
            await self.send_json(error_frame(temporarily_unavailable()))

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            raise BrokerError("A frame is a JSON object with a string 'type'.", code="bad_frame")
        frame_type = content["type"]
        handler = self.handlers.get(frame_type)
        if handler is None:
            raise BrokerError(f"Unknown frame type '{frame_type[:64]}'.", code="unknown_frame_type")
        if frame_type in self.sysop_only and not self.user.is_sysop:
            raise Forbidden(f"'{frame_type}' is for sysops only.")
        await handler(self, content)

    @classmethod
    async def encode_json(cls, content):
        return orjson.dumps(content).decode()

    # -- pushes from jobs and other sockets -------------------------------------------

    async def send_frame(self, event):
        """Send the pushed frame, or its sysop variant to a sysop (rentahal.pushes.frame_event)."""
        is_sysop = self.user is not None and self.user.is_sysop
        await self.send_json(event["sysop_frame"] if is_sysop and "sysop_frame" in event else event["frame"])

    async def user_changed(self, event):
        """Re-read the user (made or unmade sysop by an operator) so sysop-only frames follow at once."""
        await self.send_user_info()
        await self.follow_sysop_alerts()

    async def user_banned(self, event):
        """Tell the page, and close this socket, when its user is banned (the original left it registered)."""
        await self.send_json({"type": "user_banned", "guid": self.user.guid})
        await self.send_json(error_frame(banned()))
        await self.close(code=4003)

    # -- client frames ------------------------------------------------------------------

    async def send_user_info(self, content=None):
        self.user = await on_db_thread(find_user)(self.user.guid)
        await self.send_json({"type": "user_info", "data": self.user.as_frame_data()})

    async def send_previous_queries(self, content=None):
        data = await on_db_thread(previous_queries)(self.user)
        await self.send_json({"type": "previous_queries", "data": data})

    async def send_worker_update(self, content=None):
        await self.send_json(await on_db_thread(pools.worker_update_frame)(with_addresses=self.user.is_sysop))

    async def submit_query(self, content):
        query = content.get("query")
        submission = parse_submission(query, idempotency_key=content.get("idempotency_key"))
        conversation_id = parse_client_id(query.get("conversation_id"), "conversation_id")
        frame = await on_db_thread(lifecycle.accept_query)(self.user.guid, submission, conversation_id=conversation_id)
        await self.send_json(frame)

    async def speech_to_text(self, content):
        """Transcribe `audio`: a speech query acknowledged with `queue_update`, answered with
        `transcription_result` and billed as any query."""
        await self.send_json(await on_db_thread(lifecycle.accept_query)(self.user.guid, parse_speech_to_text(content)))

    async def text_to_speech(self, content):
        """Speak `text`: acknowledged with `queue_update`, answered with `speech_result`."""
        await self.send_json(await on_db_thread(lifecycle.accept_query)(self.user.guid, parse_text_to_speech(content)))

    async def vision_chunk(self, content):
        progress = await chunks.store_vision_chunk(self.user.guid, content)
        if progress.image is None:
            await self.send_json(
                {"type": "vision_chunk_received", "message": f"Chunk {progress.received}/{progress.total} received"}
            )
            return
        await self.send_json({"type": "vision_upload_complete", "message": "Image received, submitting query"})
        await self.submit_query({"query": {**progress.query, "image": progress.image}})

    async def search_queries(self, content):
        """Search past queries: a user's own; a sysop's across users, or one user's (`user`)."""
        user = require_str(content, "user", required=False) or None
        if not self.user.is_sysop:
            if user not in (None, self.user.guid):
                raise Forbidden("Only sysops search other users' queries.")
            user = self.user.guid
        found = await on_db_thread(search.search_queries)(
            content.get("query"), user=user, page=content.get("page", 1), per_page=content.get("per_page", 20)
        )
        await self.send_json({"type": "search_results", **found})

    async def set_nickname(self, content):
        nickname = require_str(content, "nickname")
        self.user = await on_db_thread(set_nickname)(self.user, nickname)
        await self.send_user_info()

    async def claim_sysop(self, content):
        """Become sysop with the operator's one-time token; the user's sockets are then sent
        `user_info` again (`accounts.actions.users.set_sysop`'s push)."""
        await on_db_thread(claim_sysop)(self.user.guid, require_str(content, "token"))

    async def pong(self, content):
        """Heartbeat answer; receiving it is all that matters."""

    async def get_stats(self, content):
        """Send the sysop panel's frames: `system_stats`, `worker_health`, `active_users`, `user_stats`."""
        for frame in await on_db_thread(sysop_frames)():
            await self.send_json(frame)

    async def add_worker(self, content):
        spec = content.get("worker")
        if not isinstance(spec, dict):
            raise BrokerError("Field 'worker' must be an object with name, address and type.", code="bad_field")
        await on_db_thread(pools.add_worker)(
            name=require_str(spec, "name"),
            address=require_str(spec, "address"),
            query_type=require_str(spec, "type"),
            wire_format=require_str(spec, "wire_format", required=False, default="predict"),
            model=require_str(spec, "model", required=False),
            api_key=require_str(spec, "api_key", required=False, default=None),
            acting_user=self.user,
        )

    async def remove_worker(self, content):
        await on_db_thread(pools.remove_worker)(require_str(content, "worker_name"), acting_user=self.user)

    async def ban_user(self, content):
        user = await on_db_thread(set_banned)(
            require_str(content, "user_guid"), True, acting_user=self.user
        )
        await self.send_json({"type": "user_banned", "guid": user.guid})

    async def unban_user(self, content):
        user = await on_db_thread(set_banned)(
            require_str(content, "user_guid"), False, acting_user=self.user
        )
        await self.send_json({"type": "user_unbanned", "guid": user.guid})

    async def terminate_query(self, content):
        guid = require_str(content, "user_guid")
        await on_db_thread(lifecycle.terminate_queries)(guid, acting_user=self.user)
        await self.send_json({"type": "query_terminated", "guid": guid})

    async def sysop_message(self, content):
        """Broadcast to everyone, or with `realm` only to the sockets whose home is that realm."""
        await on_db_thread(realm_actions.broadcast_message)(
            require_str(content, "message"), realm=require_str(content, "realm", required=False), acting_user=self.user
        )

    async def create_api_key(self, content):
        """Make a key for this user; the frame carries its secret, which is never shown again."""
        limits = {name: content[name] for name in KEY_LIMIT_FIELDS if name in content}
        key, secret = await on_db_thread(keys.create_key)(self.user.guid, acting_user=self.user, **limits)
        await self.send_json({"type": "api_key_created", "key": key.as_frame_data(), "secret": secret})

    async def list_api_keys(self, content):
        found = await on_db_thread(keys.list_keys)(self.user.guid)
        await self.send_json({"type": "api_keys", "keys": [key.as_frame_data() for key in found]})

    async def revoke_api_key(self, content):
        key_id = content.get("key_id")
        if not isinstance(key_id, int) or isinstance(key_id, bool):
            raise BrokerError("Field 'key_id' must be a whole number.", code="bad_field")
        key = await on_db_thread(keys.revoke_key)(key_id, acting_user=self.user)
        await self.send_json({"type": "api_key_revoked", "key": key.as_frame_data()})

    handlers = {
        "submit_query": submit_query,
        "create_api_key": create_api_key,
        "list_api_keys": list_api_keys,
        "revoke_api_key": revoke_api_key,
        "vision_chunk": vision_chunk,
        "speech_to_text": speech_to_text,
        "text_to_speech": text_to_speech,
        "set_nickname": set_nickname,
        "claim_sysop": claim_sysop,
        "search_queries": search_queries,
        "get_previous_queries": send_previous_queries,
        "pong": pong,
        "get_stats": get_stats,
        "add_worker": add_worker,
        "remove_worker": remove_worker,
        "ban_user": ban_user,
        "unban_user": unban_user,
        "terminate_query": terminate_query,
        "sysop_message": sysop_message,
    }
    sysop_only = frozenset(
        {"get_stats", "add_worker", "remove_worker", "ban_user", "unban_user", "terminate_query", "sysop_message"}
    )


def decode_frame(raw: str | bytes) -> object:
    """Return the JSON of a frame within the size limit, or refuse it.

    This is the one frame limit: `run_broker` starts daphne with a higher ceiling
    (`realms.management.commands.run_broker.server_message_limit`) so an oversized frame
    reaches this check and gets an `error` frame instead of a dropped socket."""
    size = len(raw.encode()) if isinstance(raw, str) else len(raw)
    if size > settings.RENTAHAL_MAX_FRAME_BYTES:
        raise BrokerError(
            f"Frame of {size} bytes is over the {settings.RENTAHAL_MAX_FRAME_BYTES}-byte limit.", code="frame_too_large"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BrokerError(f"Malformed JSON: {exc}", code="malformed") from None


"""Pushes to a user's sockets through the channel layer: the group every tab joins, and the
events the /ws consumer handles. Best effort by design; Postgres stays the record."""
from channels.layers import get_channel_layer


def user_group(guid: str) -> str:
    """Return the channel-layer group every socket of this user joins."""
    return f"user.{guid}"


async def push_frame(guid: str, frame: dict) -> None:
    """Send a frame to all of a user's sockets."""
    await get_channel_layer().group_send(user_group(guid), {"type": "send.frame", "frame": frame})


async def close_banned_sockets(guid: str) -> None:
    """Tell every socket of a user just banned to say so and close."""
    await get_channel_layer().group_send(user_group(guid), {"type": "user.banned"})

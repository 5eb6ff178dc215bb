"""System checks for the plumbing: configurations known to break the broker on this stack."""
import redis
from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def check_channel_layer(app_configs, **kwargs):
    """Catch two channel-layer pitfalls before users meet them: redis-py 8 timing out idle
    reads (closing idle WebSockets), and a Redis pool too small for a burst of connects."""
    problems = []
    layer = settings.CHANNEL_LAYERS.get("default", {})
    if not layer:
        return [Error("No default channel layer: results cannot reach sockets.", id="rentahal.E001",
                      hint="Configure CHANNEL_LAYERS['default'] with channels_redis.")]
    hosts = layer.get("CONFIG", {}).get("hosts", [])
    major = int(redis.__version__.split(".")[0])
    for host in hosts:
        if not isinstance(host, dict):
            continue
        if major >= 8 and host.get("socket_timeout", 5) is not None and host.get("socket_timeout", 5) <= 5:
            problems.append(Warning(
                "redis-py 8 times out idle channel-layer reads after 5 s, closing idle WebSockets.",
                id="rentahal.W001",
                hint="Set socket_timeout=None (or above the layer's blocking timeout) in the host config, or pin redis<8.",
            ))
        if host.get("max_connections", 100) < 500:
            problems.append(Warning(
                "A small channel-layer Redis pool turns connect bursts into HTTP 500s.",
                id="rentahal.W002",
                hint="Set max_connections to 1000 or more in the channel layer's host config.",
            ))
    return problems

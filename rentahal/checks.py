"""System checks for the plumbing: configurations known to break the broker on this stack,
and (`check --deploy`) doors a deployment must not leave open."""
import redis
import rq
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from rentahal.rq_mirror import MIRRORED_RQ_VERSION


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


@register()
def check_rq_version(app_configs, **kwargs):
    """Refuse an rq other than the one `rentahal.rq_mirror` was written against.

    The concurrent worker calls RQ's private methods and repeats parts of RQ's Worker there;
    another release may rename them or change what they write, and the worker would then
    corrupt RQ's registries quietly rather than fail.
    """
    if rq.__version__ == MIRRORED_RQ_VERSION:
        return []
    return [Error(
        f"rq {rq.__version__} is installed, but rentahal.rq_mirror mirrors rq {MIRRORED_RQ_VERSION}.",
        id="rentahal.E002",
        hint=(f"Install rq=={MIRRORED_RQ_VERSION} as pyproject.toml pins it, or compare every item that "
              "rentahal/rq_mirror.py's docstring lists with the new rq's source, then raise MIRRORED_RQ_VERSION."),
    )]


@register()
def check_watchdog(app_configs, **kwargs):
    """Warn when run_broker's watchdog would kill realm workers whose heartbeat is only late:
    a worker's jobs count as abandoned after three missed heartbeats, a worker not before."""
    if settings.RENTAHAL_WORKER_STUCK_SECONDS > 3 * settings.RENTAHAL_WORKER_HEARTBEAT:
        return []
    return [Warning(
        f"WORKER_STUCK_SECONDS ({settings.RENTAHAL_WORKER_STUCK_SECONDS:g}) is not above three "
        f"WORKER_HEARTBEAT_SECONDS ({settings.RENTAHAL_WORKER_HEARTBEAT}): the watchdog kills workers that are merely busy.",
        id="rentahal.W003",
        hint="Set WORKER_STUCK_SECONDS above three heartbeats (the default is 20 s with 5 s heartbeats).",
    )]


@register(Tags.security, deploy=True)
def check_deployment_doors(app_configs, **kwargs):
    """Refuse a deployment signing sessions with the published development key, and warn of
    settings only the local run should have."""
    problems = []
    if settings.SECRET_KEY == settings.RENTAHAL_DEVELOPMENT_SECRET_KEY:
        problems.append(Error(
            "SECRET_KEY is the development key in rentahal/settings.py: anyone can forge sessions and admin logins.",
            id="rentahal.E101",
            hint="Set the SECRET_KEY environment variable to a long random value.",
        ))
    if "*" in settings.ALLOWED_HOSTS:
        problems.append(Warning(
            "ALLOWED_HOSTS contains '*': any page may open /ws with its users' cookies.",
            id="rentahal.W101",
            hint="List the host names the broker is served as in ALLOWED_HOSTS.",
        ))
    if settings.RENTAHAL_FIRST_VISITOR_IS_SYSOP:
        problems.append(Warning(
            "FIRST_VISITOR_IS_SYSOP is on: whoever opens /ws first on an empty system becomes sysop.",
            id="rentahal.W102",
            hint="Turn it off and name the sysop with `manage.py make_sysop`.",
        ))
    return problems

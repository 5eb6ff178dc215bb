"""System checks that warn operators before a known pitfall hits their users."""
from django.core import checks


def layer_with(**host):
    return {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [{"address": "redis://x", **host}]}}}


def check_ids() -> set[str]:
    return {message.id for message in checks.run_checks() if message.id.startswith("rentahal.")}


def test_shipped_configuration_passes_the_checks():
    assert check_ids() == set()


def test_small_channel_layer_pool_is_warned_about(settings):
    settings.CHANNEL_LAYERS = layer_with(max_connections=100)

    assert "rentahal.W002" in check_ids()


def test_missing_channel_layer_is_an_error(settings):
    settings.CHANNEL_LAYERS = {}

    assert "rentahal.E001" in check_ids()


def test_redis_py_8_without_a_socket_timeout_override_is_warned_about(settings, monkeypatch):
    import redis

    monkeypatch.setattr(redis, "__version__", "8.1.0")
    settings.CHANNEL_LAYERS = layer_with(max_connections=1000)

    assert "rentahal.W001" in check_ids()


def test_redis_py_8_with_socket_timeout_disabled_passes(settings, monkeypatch):
    import redis

    monkeypatch.setattr(redis, "__version__", "8.1.0")
    settings.CHANNEL_LAYERS = layer_with(max_connections=1000, socket_timeout=None)

    assert check_ids() == set()


def test_an_rq_other_than_the_mirrored_one_is_refused(monkeypatch):
    import rq

    monkeypatch.setattr(rq, "__version__", "3.0.1")

    assert "rentahal.E002" in check_ids()


def test_the_refusal_names_the_installed_and_the_mirrored_rq(monkeypatch):
    import rq

    from rentahal.checks import check_rq_version

    monkeypatch.setattr(rq, "__version__", "3.1.0")
    [error] = check_rq_version(None)

    assert "rq 3.1.0 is installed" in error.msg and "mirrors rq 3.0.0" in error.msg

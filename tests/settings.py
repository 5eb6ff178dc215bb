"""Test settings: the real Postgres and Redis, on a Redis database and prefix of their own."""
import os

os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("CHANNEL_PREFIX", "rentahal-test")

from rentahal.settings import *  # noqa: E402,F403

RENTAHAL_READ_TIMEOUT = float(os.environ.get("MODEL_READ_TIMEOUT", 3.0))
RENTAHAL_JOB_TIMEOUT = 30
DATABASES["default"]["CONN_MAX_AGE"] = 0

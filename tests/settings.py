"""Test settings: the real Postgres and Redis, on a database, Redis db and prefix of their own.

RENTAHAL_TEST_SLOT (0-7) gives parallel test runs on one machine separate databases.
"""
import os

SLOT = int(os.environ.get("RENTAHAL_TEST_SLOT", "0"))
os.environ.setdefault("REDIS_URL", f"redis://127.0.0.1:6379/{15 - SLOT}")
os.environ.setdefault("CHANNEL_PREFIX", f"rentahal-test-{SLOT}")

from rentahal.settings import *  # noqa: E402,F403

DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
DATABASES["default"]["TEST"] = {"NAME": f"test_rentahal_{SLOT}"}  # noqa: F405

RENTAHAL_READ_TIMEOUT = float(os.environ.get("MODEL_READ_TIMEOUT", 3.0))
RENTAHAL_JOB_TIMEOUT = 30

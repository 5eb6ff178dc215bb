"""Test settings: the real Postgres and Redis, on databases, a Redis db and a prefix of their own.

RENTAHAL_TEST_SLOT (0-7) gives parallel test runs on one machine separate databases. The
whole suite runs sharded, on default plus three shard databases, so every test of the
query path also shows it works across shards. A child process (the RQ worker) is handed
SHARD_URLS naming the test shard databases (conftest.worker_environment) and uses those.
"""
import os

SLOT = int(os.environ.get("RENTAHAL_TEST_SLOT", "0"))
TEST_SHARDS = 3
os.environ.setdefault("REDIS_URL", f"redis://127.0.0.1:6379/{15 - SLOT}")
os.environ.setdefault("CHANNEL_PREFIX", f"rentahal-test-{SLOT}")

from rentahal.settings import *  # noqa: E402,F403

# The test process closes connections after each use so the test databases can be dropped
# at the end; child processes (workers, daphne) keep them, as in production.
CONN_MAX_AGE = int(os.environ.get("TEST_CONN_MAX_AGE", "0"))
DATABASES["default"]["CONN_MAX_AGE"] = CONN_MAX_AGE  # noqa: F405
DATABASES["default"]["TEST"] = {"NAME": f"test_rentahal_{SLOT}"}  # noqa: F405
if not any(alias.startswith("shard") for alias in DATABASES):  # noqa: F405
    for _index in range(TEST_SHARDS):
        DATABASES[f"shard{_index}"] = {**DATABASES["default"], "NAME": f"rentahal_shard{_index}"}  # noqa: F405
for _alias in [alias for alias in DATABASES if alias.startswith("shard")]:  # noqa: F405
    DATABASES[_alias]["CONN_MAX_AGE"] = CONN_MAX_AGE  # noqa: F405
    DATABASES[_alias]["TEST"] = {"NAME": f"test_rentahal_{SLOT}_{_alias}"}  # noqa: F405

RENTAHAL_READ_TIMEOUT = float(os.environ.get("MODEL_READ_TIMEOUT", 3.0))
RENTAHAL_JOB_TIMEOUT = 30
# Realm workers renew their jobs every 2 s, so a killed worker's jobs are seen abandoned
# within 6 s (rentahal.worker.ConcurrentWorker.get_heartbeat_ttl).
RENTAHAL_WORKER_HEARTBEAT = 2
# The fake model servers listen on loopback.
RENTAHAL_OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]
# This broker's federation identity in the test process (a fixed key: tests sign as it).
RENTAHAL_FEDERATION_ID = f"test-{SLOT}-a"
RENTAHAL_FEDERATION_BASE_URL = os.environ.get("FEDERATION_BASE_URL", "http://testserver")
RENTAHAL_FEDERATION_PRIVATE_KEY = os.environ.get("FEDERATION_PRIVATE_KEY", "A" * 43 + "=")

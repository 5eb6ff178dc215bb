"""Settings for rentahal, read from the environment through django-environ.

Every value has a default that works on a developer machine with the local Postgres and
Redis, so `manage.py` runs with no configuration at all.
"""
import re
import socket
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# The development key lets `manage.py` run unconfigured; `check --deploy` refuses it
# (rentahal.checks, rentahal.E101).
RENTAHAL_DEVELOPMENT_SECRET_KEY = "rentahal-dev-only-secret-key-change-me-in-production"
SECRET_KEY = env("SECRET_KEY", default=RENTAHAL_DEVELOPMENT_SECRET_KEY)
DEBUG = env.bool("DEBUG", default=False)
# Hosts the broker answers as, over HTTP and as the Origin of a /ws handshake
# (rentahal.origins); only this machine unless the operator names more.
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
# Same-origin form and API writes pass CSRF on their own; list origins (with scheme) only
# for a TLS-terminating proxy or another site that must write.
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_rq",
    "rest_framework",
    "drf_spectacular",
    "rest_framework.authtoken",
    "drf_spectacular_sidecar",
    "rentahal",
    "accounts",
    "pools",
    "realms",
    "federation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "rentahal.errors.StoreOutageMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# The programs' HTTP doors (/v1 and the classic routes, `rentahal.asgi`) run behind these
# alone: they check their own API keys and take no cookie, session or CSRF token, and each
# of Django's own middleware costs a request two thread hops (bench/README.md).
RENTAHAL_DOOR_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "rentahal.origins.AllowedHostMiddleware",
    "rentahal.errors.StoreOutageMiddleware",
]

ROOT_URLCONF = "rentahal.urls"
ASGI_APPLICATION = "rentahal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/rentahal"),
}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
# Per-user rows (users, queries, ledger) live on shard databases, named shard0, shard1, ...
# in the order of SHARD_URLS; with none configured they live on default (README.md, Sharding).
for _index, _url in enumerate(env.list("SHARD_URLS", default=[])):
    DATABASES[f"shard{_index}"] = env.db_url_config(_url)
    DATABASES[f"shard{_index}"].setdefault("CONN_MAX_AGE", DATABASES["default"]["CONN_MAX_AGE"])
    DATABASES[f"shard{_index}"].setdefault("CONN_HEALTH_CHECKS", True)
DATABASE_ROUTERS = ["rentahal.routers.ShardRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")

# The pub/sub layer pushed results about 2.4x faster than the core layer on this stack (near
# 1,500 against 600 group_send round trips a second); both are at-most-once, and Postgres
# stays the record. max_connections is raised because a reconnect storm otherwise exhausts
# redis-py's default pool and fails handshakes. Its publishes are pipelined
# (rentahal.channel_layer): the stock layer sends one at a time under a lock.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "rentahal.channel_layer.PipelinedPubSubChannelLayer",
        "CONFIG": {
            "hosts": [{"address": env("CHANNEL_REDIS_URL", default=REDIS_URL), "max_connections": 1000}],
            "prefix": env("CHANNEL_PREFIX", default="rentahal"),
        },
    },
}

# Realm queues are created from Realm rows at run time (rentahal.queues.get_queue); the
# default realms' queues are listed here too so django-rq's dashboard shows them.
RQ_QUEUES = {
    name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600}
    for name in ["default", "realm.chat", "realm.vision", "realm.imagine", "realm.speech"]
}
RQ_SHOW_ADMIN_LINK = True

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# WhiteNoise serves the admin's files straight from the app directories, so daphne alone
# serves the whole console without a collectstatic step or a separate web server.
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Session logins only (with CSRF on every write): no HTTP Basic, which would take a
        # staff password on every request and invite guessing it.
        "rest_framework.authentication.SessionAuthentication",
        # Staff tokens for agents and tools (realms.agents.callers, the one place they are checked).
        "realms.agents.authentication.StaffTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rentahal.permissions.StaffModelPermissions"],
    "EXCEPTION_HANDLER": "rentahal.errors.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# The OpenAPI schema of the APIs at /api/schema/, browsed at /api/docs/ with Swagger UI
# served from drf-spectacular-sidecar's files through WhiteNoise (no CDN).
SPECTACULAR_SETTINGS = {
    "TITLE": "rentahal",
    "DESCRIPTION": "The pools, realms and agents APIs of the rentahal broker (staff, session login), the federation "
    "endpoints (signed by peers), the OpenAI-compatible /v1 and the classic REST routes (an API key). README.md has "
    "examples.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema describes public doors and is public itself: a program holding only an API
    # key (not a staff token) reads it too.
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "realms.doors.schema.add_doors"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
}

# --- The broker's own knobs -------------------------------------------------------------
# Billing (docs/protocol.md §4): cost = base + processing seconds x rate.
RENTAHAL_BASE_COST_PER_QUERY = env.float("BASE_COST_PER_QUERY", default=0.01)
RENTAHAL_COST_PER_SECOND = env.float("COST_PER_SECOND", default=0.001)
# Largest WebSocket frame accepted, and largest prompt inside it.
RENTAHAL_MAX_FRAME_BYTES = env.int("MAX_FRAME_BYTES", default=2 * 1024 * 1024)
RENTAHAL_MAX_PROMPT_CHARS = env.int("MAX_PROMPT_CHARS", default=32_000)
# Largest image (decoded bytes) a vision query may carry, sent whole or in vision_chunk
# frames; a user's unfinished chunked uploads, and how long one waits for its next chunk.
RENTAHAL_MAX_IMAGE_BYTES = env.int("MAX_IMAGE_BYTES", default=8 * 1024 * 1024)
RENTAHAL_MAX_UPLOADS_PER_USER = env.int("MAX_UPLOADS_PER_USER", default=4)
RENTAHAL_UPLOAD_TTL_SECONDS = env.int("UPLOAD_TTL_SECONDS", default=600)
# Largest recording (decoded bytes) and longest one (seconds) a speech query may carry; the
# bytes fit in one frame as base64.
RENTAHAL_MAX_AUDIO_BYTES = env.int("MAX_AUDIO_BYTES", default=1024 * 1024)
RENTAHAL_MAX_AUDIO_SECONDS = env.float("MAX_AUDIO_SECONDS", default=60.0)
# Frames an event-stream subscriber (/ws/events) may fall behind before it is dropped.
RENTAHAL_EVENT_BUFFER = env.int("EVENT_BUFFER", default=1000)
# Queries waiting in one realm's queue before new ones are refused.
RENTAHAL_QUEUE_LIMIT = env.int("QUEUE_LIMIT", default=1000)
# Fair share (README.md, Fair share): a user's queries not yet answered (waiting or being
# served), and of those the ones still waiting for a worker, before new ones are refused
# with `too_many_queries` and a `retry_after` hint in seconds. The queued cap bounds how
# many of one user's queries another user's next query can wait behind.
RENTAHAL_MAX_QUERIES_PER_USER_IN_FLIGHT = env.int("MAX_QUERIES_PER_USER_IN_FLIGHT", default=32)
RENTAHAL_MAX_QUERIES_PER_USER_QUEUED = env.int("MAX_QUERIES_PER_USER_QUEUED", default=16)
RENTAHAL_TOO_MANY_QUERIES_RETRY_AFTER = env.float("TOO_MANY_QUERIES_RETRY_AFTER_SECONDS", default=2.0)
# How long a submit_query's idempotency key names its query (docs/protocol.md §1).
RENTAHAL_IDEMPOTENCY_WINDOW = env.float("IDEMPOTENCY_WINDOW_SECONDS", default=86400.0)
# Model-server calls: connect and total read timeouts, and a cap on answer size.
RENTAHAL_CONNECT_TIMEOUT = env.float("MODEL_CONNECT_TIMEOUT", default=5.0)
RENTAHAL_READ_TIMEOUT = env.float("MODEL_READ_TIMEOUT", default=300.0)
RENTAHAL_MAX_ANSWER_BYTES = env.int("MAX_ANSWER_BYTES", default=32 * 1024 * 1024)
# Networks of non-global addresses (loopback, private, CGNAT) that worker addresses may use,
# as CIDRs, e.g. "127.0.0.0/8,::1/128,192.168.1.0/24"; empty refuses them all. Link-local and
# cloud metadata addresses are refused whatever this says (rentahal.outbound).
RENTAHAL_OUTBOUND_ALLOWED_NETWORKS = env.list("OUTBOUND_ALLOWED_NETWORKS", default=[])
# RQ job timeout for one query, above the model read timeout so the call fails first.
RENTAHAL_JOB_TIMEOUT = env.int("QUERY_JOB_TIMEOUT", default=360)
# Threads (each with its own database connection) that run a web process's database calls.
RENTAHAL_DB_THREADS = env.int("DB_THREADS", default=4)
# Attempt outcomes (the A/B report's rows) older than this are pruned by the health checker.
RENTAHAL_OUTCOME_RETENTION_DAYS = env.float("OUTCOME_RETENTION_DAYS", default=30)
# Health samples (one per worker per health round) for the A/B comparison's charts.
RENTAHAL_HEALTH_SAMPLE_RETENTION_HOURS = env.float("HEALTH_SAMPLE_RETENTION_HOURS", default=48)
# Recovery of lost work (README, "Lost work is re-run"). Accepted queries older than
# RECONCILE_AFTER whose RQ job is gone are re-enqueued by the reconciler, which run_broker
# runs every RECONCILE_EVERY seconds; a realm worker renews its jobs' place in RQ's started
# registry (and its calls' leases on model servers, pools.dispatch) every WORKER_HEARTBEAT
# seconds, and a job not renewed for three of them (its worker died) is run again; the finish and failure writes of an answered query are
# retried for DB_RETRY seconds while Postgres is unreachable.
RENTAHAL_RECONCILE_AFTER = env.float("RECONCILE_AFTER_SECONDS", default=10.0)
RENTAHAL_RECONCILE_EVERY = env.float("RECONCILE_EVERY_SECONDS", default=5.0)
RENTAHAL_WORKER_HEARTBEAT = env.int("WORKER_HEARTBEAT_SECONDS", default=5)
# run_broker's watchdog kills (whole process group) and restarts a realm worker whose RQ
# heartbeat has not moved for this long though its process lives (frozen, its loop blocked).
RENTAHAL_WORKER_STUCK_SECONDS = env.float("WORKER_STUCK_SECONDS", default=20.0)
# The `retry_after` hint (and HTTP Retry-After) of a request refused because Redis or
# Postgres was unreachable (`temporarily_unavailable`).
RENTAHAL_STORE_OUTAGE_RETRY_AFTER = env.float("STORE_OUTAGE_RETRY_AFTER_SECONDS", default=5.0)
RENTAHAL_DB_RETRY_SECONDS = env.float("DB_RETRY_SECONDS", default=60.0)
# Pools (pools.dispatch, pools.health): calls per query before it fails (failover), how
# long one run of a query waits in line when every member is at its concurrency cap (it
# holds a realm-worker slot meanwhile, so this stays short; then its job goes back on the
# queue), the cap of a worker whose own `max_concurrency` is 0 (a hanging server then
# holds at most this many slots), and cooldowns by error class
# (server faults and timeouts double per consecutive failure, up to the maximum).
RENTAHAL_MAX_ATTEMPTS = env.int("MAX_ATTEMPTS", default=3)
RENTAHAL_BUSY_WAIT_SECONDS = env.float("BUSY_WAIT_SECONDS", default=5.0)
# How long after its acceptance a query whose members are all busy may still be put back
# on its realm's queue to wait; past it, it fails (not charged). README, Fair share.
RENTAHAL_QUEUE_WAIT_LIMIT = env.float("QUEUE_WAIT_LIMIT_SECONDS", default=300.0)
RENTAHAL_DEFAULT_WORKER_CONCURRENCY = env.int("DEFAULT_WORKER_CONCURRENCY", default=16)
# A streamed answer's pieces are pushed to the user's sockets the moment the first arrives,
# then gathered: at most one push per query per CHUNK_PUSH_SECONDS, sooner once
# CHUNK_PUSH_CHARS are waiting (rentahal.pushes.stream_query_chunks).
RENTAHAL_CHUNK_PUSH_SECONDS = env.float("CHUNK_PUSH_SECONDS", default=0.05)
RENTAHAL_CHUNK_PUSH_CHARS = env.int("CHUNK_PUSH_CHARS", default=8192)
RENTAHAL_COOLDOWN_SERVER_SECONDS = env.float("COOLDOWN_SERVER_SECONDS", default=10.0)
RENTAHAL_COOLDOWN_TIMEOUT_SECONDS = env.float("COOLDOWN_TIMEOUT_SECONDS", default=30.0)
RENTAHAL_COOLDOWN_RATE_LIMITED_SECONDS = env.float("COOLDOWN_RATE_LIMITED_SECONDS", default=30.0)
RENTAHAL_COOLDOWN_AUTH_SECONDS = env.float("COOLDOWN_AUTH_SECONDS", default=3600.0)
RENTAHAL_COOLDOWN_MAX_SECONDS = env.float("COOLDOWN_MAX_SECONDS", default=3600.0)
# Latency strategy: EWMA weight of the newest outcome, and how often a member is explored.
RENTAHAL_EWMA_ALPHA = env.float("EWMA_ALPHA", default=0.3)
RENTAHAL_LATENCY_EXPLORE = env.float("LATENCY_EXPLORE", default=0.1)
# Affinity strategy: how long a conversation stays with its member after its last query.
RENTAHAL_AFFINITY_TTL = env.int("AFFINITY_TTL_SECONDS", default=3600)
# Hosted providers (pools.providers): the keys of workers registered without their own, and
# the most tokens asked of one (Anthropic requires a limit; TGI's own default is short).
RENTAHAL_ANTHROPIC_API_KEY = env("ANTHROPIC_API_KEY", default="")
RENTAHAL_HF_TOKEN = env("HF_TOKEN", default="")
RENTAHAL_HOSTED_MAX_TOKENS = env.int("HOSTED_MAX_TOKENS", default=1024)
# Health probe (manage.py check_worker_health): per-probe timeout and probes at once.
RENTAHAL_HEALTH_CHECK_TIMEOUT = env.float("HEALTH_CHECK_TIMEOUT", default=5.0)
RENTAHAL_HEALTH_CHECK_CONCURRENCY = env.int("HEALTH_CHECK_CONCURRENCY", default=50)
# Realm metrics (rentahal.metrics): the recent window percentiles, error rates and
# utilisation are computed over, and the most samples kept per realm in it.
RENTAHAL_METRICS_WINDOW = env.float("METRICS_WINDOW_SECONDS", default=300.0)
RENTAHAL_METRICS_WINDOW_SIZE = env.int("METRICS_WINDOW_SIZE", default=5000)
# Scaling advice (realms.scaling): thresholds over the window, and the dotted path of the
# callable given each advice to provision or retire workers (the default only logs).
RENTAHAL_SCALE_UP_UTILISATION = env.float("SCALE_UP_UTILISATION", default=0.8)
RENTAHAL_SCALE_UP_ERROR_RATE = env.float("SCALE_UP_ERROR_RATE", default=0.05)
RENTAHAL_SCALE_DOWN_UTILISATION = env.float("SCALE_DOWN_UTILISATION", default=0.2)
RENTAHAL_SCALING_HOOK = env("SCALING_HOOK", default="realms.scaling.log_advice")
# Doors (rentahal.metrics_access, accounts.actions.users): /metrics answers a bearer token
# or a client address in the allow-list (addresses or networks; empty refuses everyone but
# token holders); the first visitor of an empty system becomes sysop only when asked
# (`run_broker` asks for its local run), otherwise `manage.py make_sysop` names one.
RENTAHAL_METRICS_TOKEN = env("METRICS_TOKEN", default="")
RENTAHAL_METRICS_ALLOWED_ADDRESSES = env.list("METRICS_ALLOWED_ADDRESSES", default=[])
RENTAHAL_FIRST_VISITOR_IS_SYSOP = env.bool("FIRST_VISITOR_IS_SYSOP", default=False)
# How long a sysop claim token (`manage.py sysop_claim_token`, printed by `run_broker`) may
# be used before it expires.
RENTAHAL_SYSOP_CLAIM_TTL = env.float("SYSOP_CLAIM_TTL_SECONDS", default=3600.0)
# Federation (docs/federation.md): this broker's id among peers, the public base URL peers
# call it at (signatures cover it), and its Ed25519 private key, from the environment (PEM
# or base64 of the 32-byte seed) or else a file `manage.py federation_keys create` writes.
# Retired public keys stay published for KEY_OVERLAP seconds after a rotation.
RENTAHAL_FEDERATION_ID = env("FEDERATION_ID", default=re.sub(r"[^a-z0-9.-]+", "-", socket.gethostname().lower()).strip("-.") or "rentahal")
RENTAHAL_FEDERATION_BASE_URL = env("FEDERATION_BASE_URL", default="http://127.0.0.1:8000")
RENTAHAL_FEDERATION_PRIVATE_KEY = env("FEDERATION_PRIVATE_KEY", default="")
RENTAHAL_FEDERATION_KEY_FILE = env("FEDERATION_KEY_FILE", default=str(BASE_DIR / "federation_key.pem"))
RENTAHAL_FEDERATION_KEY_OVERLAP = env.float("FEDERATION_KEY_OVERLAP_SECONDS", default=7 * 86400.0)
# Signed peer calls: `created` may be this many seconds off either way; nonces are kept as long.
RENTAHAL_FEDERATION_SIGNATURE_WINDOW = env.int("FEDERATION_SIGNATURE_WINDOW_SECONDS", default=300)
# Brokers a query may pass through beyond its own (1: a peer serves it itself).
RENTAHAL_FEDERATION_MAX_HOPS = env.int("FEDERATION_MAX_HOPS", default=1)
# The largest `route` body a peer may send (413 `route_too_large` beyond): room for a vision
# query's image as base64 and a prompt. Django's DATA_UPLOAD_MAX_MEMORY_SIZE is not used for it.
RENTAHAL_FEDERATION_MAX_ROUTE_BYTES = env.int(
    "FEDERATION_MAX_ROUTE_BYTES", default=RENTAHAL_MAX_IMAGE_BYTES * 4 // 3 + 256 * 1024
)

RENTAHAL_FEDERATION_INVITATION_HOURS = env.float("FEDERATION_INVITATION_HOURS", default=24.0)
# Join requests one address (REMOTE_ADDR) may make per hour, whatever they carry (429 beyond).
RENTAHAL_FEDERATION_JOINS_PER_HOUR = env.int("FEDERATION_JOINS_PER_HOUR", default=10)
# What this broker asks of peers it serves (advertised), and the limits a new peer is granted.
RENTAHAL_FEDERATION_PRICE_PER_QUERY = env.float("FEDERATION_PRICE_PER_QUERY", default=RENTAHAL_BASE_COST_PER_QUERY)
RENTAHAL_FEDERATION_PRICE_PER_SECOND = env.float("FEDERATION_PRICE_PER_SECOND", default=RENTAHAL_COST_PER_SECOND)
RENTAHAL_FEDERATION_PEER_QUERIES_PER_MINUTE = env.int("FEDERATION_PEER_QUERIES_PER_MINUTE", default=60)
RENTAHAL_FEDERATION_PEER_IN_FLIGHT = env.int("FEDERATION_PEER_IN_FLIGHT", default=8)
RENTAHAL_FEDERATION_PEER_SPEND = env.float("FEDERATION_PEER_SPEND", default=10.0)
RENTAHAL_FEDERATION_SPEND_PERIOD = env.int("FEDERATION_SPEND_PERIOD_SECONDS", default=86400)

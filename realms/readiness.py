"""/health and /ready, for load balancers and container platforms.

/health says the process answers (liveness: restart it if not). /ready says it can serve
queries now: every database (default and each shard) and Redis answer, and each primary
realm has at least one worker that is not blacklisted (readiness: send it traffic if so).
"""
from django.db import connections
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from pools.health import serving_workers
from realms.registry import registry_cache
from rentahal.db_threads import on_db_thread
from rentahal.queues import redis_connection


@require_GET
async def health(request):
    return JsonResponse({"status": "ok"})


def check_databases() -> dict[str, str]:
    found = {}
    for alias in connections:
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
            found[alias] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready, and says which
            found[alias] = f"unreachable: {type(exc).__name__}"
    return found


def check_realms() -> dict[str, str]:
    found = {}
    for realm in registry_cache.current().realms:
        if realm.query_type:
            count = len(serving_workers(realm.name, realm.query_type))
            found[realm.name] = f"{count} serving worker(s)" if count else "no serving worker"
    return found


def gather_readiness() -> tuple[bool, dict]:
    checks: dict = {"databases": check_databases()}
    try:
        redis_connection().ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    is_ready = checks["redis"] == "ok" and all(state == "ok" for state in checks["databases"].values())
    if is_ready:
        checks["realms"] = check_realms()
        is_ready = all(state != "no serving worker" for state in checks["realms"].values())
    return is_ready, checks


@require_GET
async def ready(request):
    is_ready, checks = await on_db_thread(gather_readiness)()
    return JsonResponse({"status": "ready" if is_ready else "not ready", "checks": checks}, status=200 if is_ready else 503)

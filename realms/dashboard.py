"""The operators' live dashboard: per realm queue depth, in flight, queries and errors,
p50/p95/p99, utilisation and connections, and workers by state; sent every second over
/ws/dashboard, a socket only staff may open. The figures are the ones /metrics exports
(`rentahal.metrics.realm_metrics` and `realms.status.realm_gauges`), read the same way."""
import asyncio
import logging
import time

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from pools.status import describe_workers
from realms.status import realm_gauges
from rentahal import metrics
from rentahal.db_threads import on_db_thread
from rentahal.errors import STORE_OUTAGES

logger = logging.getLogger(__name__)

TICK_SECONDS = 1.0
# The registered WebSocket close code a server uses for a policy violation (RFC 6455 §7.4.1).
NOT_STAFF = 4003


def worker_state(row: dict) -> str:
    if row["is_blacklisted"]:
        return "blacklisted"
    if row["cooldown_until"]:
        return "cooling"
    return "busy" if row["in_flight"] else "idle"


def dashboard_figures() -> dict:
    """Return one frame of the dashboard: every realm's figures and the workers by state."""
    realms = []
    for name, (workers, depth, in_flight) in sorted(realm_gauges().items()):
        figures = metrics.realm_metrics(name, workers=workers)
        realms.append({
            "name": name,
            "queue_depth": depth,
            "in_flight": in_flight,
            "workers": workers,
            "queries_processed": figures["queries_processed"],
            "errors": figures["errors"],
            "error_rate": figures["error_rate"],
            "processing_time": figures["processing_time"],
            "utilisation": figures["utilisation"],
            "connections": figures["connections"],
        })
    states = {"idle": 0, "busy": 0, "cooling": 0, "blacklisted": 0}
    for row in describe_workers():
        states[worker_state(row)] += 1
    return {"at": time.time(), "realms": realms, "workers": states}


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    """One open dashboard: refused unless its session is a staff login, then fed every second."""

    ticker: asyncio.Task | None = None

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not (user.is_active and user.is_staff):
            await self.close(code=NOT_STAFF)
            return
        await self.accept()
        self.ticker = asyncio.create_task(self.feed())

    async def disconnect(self, code):
        if self.ticker is not None:
            self.ticker.cancel()

    async def feed(self):
        while True:
            try:
                await self.send_json({"type": "dashboard", "data": await on_db_thread(dashboard_figures)()})
            except STORE_OUTAGES as exc:
                logger.warning("dashboard figures unavailable: %s", exc)
            await asyncio.sleep(TICK_SECONDS)

"""What operators see of pools and workers: configuration joined with live state from Redis
(health score and blacklist, cooldown, in flight, latency, chosen count), for the API and the
admin."""
from __future__ import annotations

from datetime import datetime, timezone

from pools import state
from pools.models import PoolAlias, Worker, broker_of_worker


def timestamp(seconds: float | None) -> str | None:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat() if seconds else None


def blacklisted_by(worker: Worker, view: dict) -> str:
    """Return who took the worker out of selection: "operator", "health" (its score reached 0), or ""."""
    if worker.is_blacklisted:
        return "operator"
    return "health" if view["is_blacklisted"] else ""


def member_rows(pool: PoolAlias | None, workers: list[Worker], weights: dict[str, int] | None = None) -> list[dict]:
    views = state.member_views([worker.name for worker in workers], pool.id if pool else None)
    rows = []
    for worker in workers:
        view = views[worker.name]
        row = {
            "name": worker.name,
            "realm": worker.realm,
            "health_score": view["health_score"],
            "is_blacklisted": worker.is_blacklisted or view["is_blacklisted"],
            "blacklisted_by": blacklisted_by(worker, view),
            "last_active": timestamp(view["last_active"]),
            "cooldown_until": timestamp(view["cooldown_until"]),
            "cooldown_reason": view["cooldown_reason"],
            "in_flight": view["in_flight"],
            "max_concurrency": worker.max_concurrency,
            "latency": view["latency"],
            "success_rate": view["success_rate"],
            "chosen": view["chosen"],
        }
        if weights is not None:
            row["weight"] = weights.get(worker.name, 1)
        rows.append(row)
    return rows


def worker_frames(workers: list[Worker], *, with_addresses: bool = False) -> list[dict]:
    """Return the workers as `worker_update` frames list them, their runtime health read in one round trip.

    Addresses only `with_addresses`, for sysops and staff: a worker's internal address tells
    anyone else where the model servers are and where to aim.
    """
    health = state.health_of([worker.name for worker in workers])
    frames = [worker.as_frame_data(health[worker.name]) for worker in workers]
    return frames if with_addresses else [without_address(frame) for frame in frames]


def pool_aliases() -> list[dict]:
    """Return the pool aliases as `worker_update` lists them, so a page can offer them as model choices."""
    return [
        {"name": pool.name, "query_type": pool.query_type, "realm": pool.realm, "strategy": pool.strategy}
        for pool in PoolAlias.objects.order_by("name", "realm")
    ]


def without_address(frame: dict) -> dict:
    """Return a worker's frame as anyone may see it: its name, type and health, not its address."""
    return {field: value for field, value in frame.items() if field != "address"}


def describe_pool(pool: PoolAlias) -> dict:
    seats = list(pool.memberships.select_related("worker").order_by("worker__name"))
    return {
        "id": pool.id,
        "name": pool.name,
        "realm": pool.realm,
        "query_type": pool.query_type,
        "strategy": pool.strategy,
        "members": member_rows(pool, [seat.worker for seat in seats], {seat.worker.name: seat.weight for seat in seats}),
    }


def describe_pools() -> list[dict]:
    return [describe_pool(pool) for pool in PoolAlias.objects.all()]


def describe_workers(workers: list[Worker] | None = None) -> list[dict]:
    workers = list(Worker.objects.all()) if workers is None else workers
    rows = member_rows(None, workers)
    for row, worker in zip(rows, workers):
        row.update(query_type=worker.query_type, wire_format=worker.wire_format, address=worker.address)
    return rows


def describe_worker(worker: Worker) -> dict:
    return describe_workers([worker])[0]


def health_colour(row: dict) -> str:
    """Return the colour a worker is drawn in: black when blacklisted (by an operator or the
    health rules), red under 50, yellow under 80, else green."""
    if row["is_blacklisted"]:
        return "black"
    if row["health_score"] < 50:
        return "red"
    return "yellow" if row["health_score"] < 80 else "green"


def pool_graph() -> dict:
    """Return pools, workers and peer brokers as a graph for the admin's pool picture: a node
    per pool, per worker (its health colour, load and cooldown) and per peer broker, an edge
    per pool membership.

    A peer broker is known here by the `peer` workers federation mirrors from it, one per
    query type it serves (pools imports no federation); it is drawn once, joined to every
    pool that lists any of them.
    """
    workers = list(Worker.objects.order_by("name"))
    nodes, node_of, peers = [], {}, {}
    for worker, row in zip(workers, member_rows(None, workers)):
        if worker.is_remote:
            broker = broker_of_worker(worker.name) or worker.model or worker.name
            peers.setdefault(broker, []).append((worker, row))
            node_of[worker.name] = f"peer:{broker}"
            continue
        node_of[worker.name] = f"worker:{worker.name}"
        nodes.append({
            "id": node_of[worker.name], "kind": "worker", "label": row["name"], "realm": row["realm"],
            "query_type": worker.query_type, "health_score": row["health_score"], "colour": health_colour(row),
            "blacklisted_by": row["blacklisted_by"], "in_flight": row["in_flight"],
            "max_concurrency": row["max_concurrency"], "cooldown_until": row["cooldown_until"],
            "cooldown_reason": row["cooldown_reason"],
        })
    nodes.extend(peer_node(broker, served) for broker, served in sorted(peers.items()))
    edges = []
    for pool in PoolAlias.objects.prefetch_related("memberships__worker").order_by("name", "realm"):
        pool_id = f"pool:{pool.id}"
        nodes.append({
            "id": pool_id, "kind": "pool", "label": pool.name + (f" ({pool.realm})" if pool.realm else ""),
            "realm": pool.realm, "query_type": pool.query_type, "strategy": pool.strategy,
        })
        edges.extend(
            {"source": pool_id, "target": node_of[seat.worker.name], "weight": seat.weight} for seat in pool.memberships.all()
        )
    return {"nodes": nodes, "edges": edges}


def peer_node(broker: str, served: list[tuple[Worker, dict]]) -> dict:
    """Return a peer broker's node: coloured by the least healthy of the types it still serves
    (black when it serves none: blacklisted, or not an active peer), sized by the queries it
    runs for this broker, marked while any of its types cools down."""
    rows = [row for _worker, row in served]
    serving = [row for row in rows if not row["is_blacklisted"]]
    weakest = min(serving, key=lambda row: row["health_score"], default=None)
    cooldowns = sorted(row["cooldown_until"] for row in rows if row["cooldown_until"])
    return {
        "id": f"peer:{broker}", "kind": "peer", "label": broker,
        "query_types": [worker.query_type for worker, _row in served],
        "health_score": weakest["health_score"] if weakest else 0,
        "colour": health_colour(weakest) if weakest else "black",
        "blacklisted_by": "" if weakest else rows[0]["blacklisted_by"],
        "in_flight": sum(row["in_flight"] for row in rows),
        "cooldown_until": cooldowns[0] if cooldowns else None,
        "cooldown_reason": next((row["cooldown_reason"] for row in rows if row["cooldown_until"]), ""),
    }

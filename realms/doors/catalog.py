"""What a request's `model` may name, read from the pool and realm configuration caches:
a pool alias or realm (`$CHAT`), a worker, or a model some worker serves."""
import dataclasses

from pools.clients import client_for
from pools.config import snapshot_cache
from realms.registry import registry_cache
from rentahal.errors import BrokerError, NotFound


@dataclasses.dataclass(frozen=True)
class Entry:
    """One name a client may ask for, and what kind of thing it names."""

    id: str
    kind: str  # alias, realm, worker or model
    query_types: frozenset[str]


def entries() -> list[Entry]:
    """Return every name, aliases and realms first, then workers, then models."""
    snapshot = snapshot_cache.current()
    found: dict[str, Entry] = {}

    def add(name: str, kind: str, query_type: str) -> None:
        known = found.get(name)
        types = frozenset({query_type}) | (known.query_types if known else frozenset())
        found[name] = Entry(name, known.kind if known else kind, types)

    for pool in snapshot.pools:
        add(pool.name, "alias", pool.query_type)
    for realm in registry_cache.current().realms:
        if realm.query_type:
            add(realm.name, "realm", realm.query_type)
    for worker in sorted(snapshot.workers.values(), key=lambda worker: worker.name):
        add(worker.name, "worker", worker.query_type)
    for worker in sorted(snapshot.workers.values(), key=lambda worker: worker.model):
        if worker.model and worker.model not in found:
            add(worker.model, "model", worker.query_type)
    return list(found.values())


def entries_for(key) -> list[Entry]:
    """Return the names the key may use."""
    return [entry for entry in entries() if key.may_use(entry.id)]


def find_entry(name: str) -> Entry:
    for entry in entries():
        if entry.id == name:
            return entry
    raise unknown_model(name)


def unknown_model(name: str) -> NotFound:
    return NotFound(f"The model '{name[:128]}' does not exist: ask GET /v1/models for the ones you may use.", code="model_not_found")


def model_name_for(entry: Entry) -> str:
    """Return the `model_name` a query carries to reach the entry (pools.selection.planning);
    a realm is reached by its query type alone."""
    return "" if entry.kind == "realm" else entry.id


def workers_behind(entry: Entry, query_type: str):
    """Return the workers of `query_type` that a query naming the entry may reach."""
    snapshot = snapshot_cache.current()
    workers = [worker for worker in snapshot.workers.values() if worker.query_type == query_type]
    if entry.kind == "alias":
        members = {name for pool in snapshot.pools if pool.name == entry.id for name in pool.members}
        return [worker for worker in workers if worker.name in members]
    if entry.kind == "worker":
        return [worker for worker in workers if worker.name == entry.id]
    if entry.kind == "model":
        return [worker for worker in workers if worker.model == entry.id]
    return workers


def require_embeddings(entry: Entry) -> None:
    """Refuse a model behind which no worker serves embeddings (Ollama and OpenAI formats do)."""
    if not any(client_for(worker.wire_format).serves_embeddings for worker in workers_behind(entry, "chat")):
        raise BrokerError(
            f"No worker behind '{entry.id}' serves embeddings: only Ollama and OpenAI-format chat servers do.",
            code="embeddings_unsupported",
        )

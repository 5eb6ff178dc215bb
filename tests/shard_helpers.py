"""Helpers for the shard tests: users with a chosen guid prefix, their history, where rows are."""
import io
import uuid

from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.actions.queries import Answer, Failure, accept_query, fail_queries, finish_queries, start_queries
from accounts.actions.users import get_or_create_user
from rentahal.shard_moves import set_map_entry
from rentahal.shard_placement import rows_by_prefix
from rentahal.sharding import publish_token, shard_aliases


def guid_with_prefix(prefix: str) -> str:
    return str(uuid.UUID(prefix + uuid.uuid4().hex[2:]))


def map_prefix(prefix: str, alias: str) -> None:
    """Point a prefix at a shard as a finished move would (before it has any rows)."""
    publish_token(set_map_entry(prefix, alias))


def make_history(guid: str, *, queries: int, failed: int = 0) -> list[str]:
    """Create the user and `queries` answered, charged queries (and `failed` failed ones)."""
    user = get_or_create_user(guid)
    ids = []
    for number in range(queries + failed):
        query = accept_query(
            user.guid, query_type="chat", prompt=f"question {number}", model_type="worker_node", model_name="",
            image="", realm="$CHAT",
        )
        [started] = start_queries([query.id])
        if number < queries:
            finish_queries([Answer(started, result="answer", result_type="text", worker="fake", processing_time=1.0)])
        else:
            fail_queries([Failure(query.id, "no")])
        ids.append(str(query.id))
    return ids


def rows_on(prefix: str) -> dict[str, tuple[int, int, int]]:
    """Return (users, queries, charges) of the prefix on each shard that has any."""
    found = {}
    for alias in shard_aliases():
        rows = rows_by_prefix(alias).get(prefix)
        if rows is not None and rows.total:
            found[alias] = (rows["users"], rows["queries"], rows["charges"])
    return found


def output_of(command: str, *arguments: str) -> str:
    """Run a management command and return its output; a CommandError carries it as `.output`."""
    out = io.StringIO()
    try:
        call_command(command, *arguments, stdout=out)
    except CommandError as exc:
        exc.output = out.getvalue()
        raise
    return out.getvalue()

"""Full-text search over past queries (their prompts and text results), gathered from every
shard, ranked and paginated: a user's own, or staff's and sysops' across users.

Each shard ranks its own matches with Postgres full-text search (`websearch_to_tsquery`, so
a person's "quoted phrase" and -word work), over the expression its GIN index holds
(migration `query_search_index`); the best `page × per_page` of each shard are merged by
rank, so a page is right however the matches are spread over shards.
"""
from __future__ import annotations

from django.db import connections

from accounts.models import Query
from rentahal.errors import Invalid
from rentahal.sharding import shard_aliases, shard_for_guid

MAX_SEARCH_CHARS = 200
MAX_PER_PAGE = 50
# The deepest match a search may page to: every shard returns up to this many rows.
MAX_SEARCH_DEPTH = 1000
EXCERPT_CHARS = 300
# The indexed text: prompt and text answer, each cut where a tsvector stays under its 1 MB
# limit (images and audio are base64, not words). The index (migration
# 0008_query_search_index) is on exactly this expression, or Postgres would not use it.
SEARCH_DOCUMENT = (
    "to_tsvector('english'::regconfig, left(prompt, 100000) || ' ' || "
    "CASE WHEN result_type = 'text' THEN left(result, 100000) ELSE '' END)"
)


def parse_search(text: object, page: object = 1, per_page: object = 20) -> tuple[str, int, int]:
    """Return the validated search words, page and page size, or refuse them with Invalid."""
    fields: dict[str, list[str]] = {}
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        fields["query"] = ["Give the words to search for."]
    elif len(text) > MAX_SEARCH_CHARS:
        fields["query"] = [f"At most {MAX_SEARCH_CHARS} characters."]
    numbers = {}
    for name, value, ceiling in (("page", page, None), ("per_page", per_page, MAX_PER_PAGE)):
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if isinstance(value, bool) or number < 1 or (ceiling is not None and number > ceiling):
            fields[name] = [f"A whole number from 1{f' to {ceiling}' if ceiling else ''}."]
        numbers[name] = number
    if not fields and numbers["page"] * numbers["per_page"] > MAX_SEARCH_DEPTH:
        fields["page"] = [f"Searches page through the best {MAX_SEARCH_DEPTH} matches; narrow the words instead."]
    if fields:
        raise Invalid(fields=fields, code="bad_search")
    return text.strip(), numbers["page"], numbers["per_page"]


def search_queries(text: object, *, user: str | None, page: object = 1, per_page: object = 20) -> dict:
    """Return the page of queries matching `text`, best first: only `user`'s when given
    (a guid), everyone's when None. Callers decide the scope (realms.agents.callers.Caller.search_scope,
    the socket's sysop check): this function searches what it is told to."""
    words, page, per_page = parse_search(text, page, per_page)
    depth = page * per_page
    aliases = [shard_for_guid(user)] if user else shard_aliases()
    found, total = [], 0
    for alias in aliases:
        rows, count = search_shard(alias, words, user=user, limit=depth)
        found += rows
        total += count
    found.sort(key=lambda row: (row["rank"], row["accepted_at"]), reverse=True)
    page_rows = found[(page - 1) * per_page : depth]
    return {
        "query": words,
        "page": page,
        "per_page": per_page,
        "total": total,
        "results": [as_result(row) for row in page_rows],
    }


def search_shard(alias: str, words: str, *, user: str | None, limit: int) -> tuple[list[dict], int]:
    """Return one shard's best `limit` matches and how many it has in all."""
    table = Query._meta.db_table
    owner = "AND user_id = %(user)s" if user else ""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"""
            WITH matches AS (
                SELECT id, user_id, query_type, realm, status, prompt, result, result_type, accepted_at,
                       ts_rank({SEARCH_DOCUMENT}, terms) AS rank
                FROM {table}, websearch_to_tsquery('english'::regconfig, %(words)s) AS terms
                WHERE {SEARCH_DOCUMENT} @@ terms {owner}
            )
            SELECT *, count(*) OVER () FROM matches ORDER BY rank DESC, accepted_at DESC LIMIT %(limit)s
            """,
            {"words": words, "user": user, "limit": limit},
        )
        columns = [column.name for column in cursor.description]
        rows = [dict(zip(columns, values)) for values in cursor.fetchall()]
    total = rows[0]["count"] if rows else 0
    return rows, total


def excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def as_result(row: dict) -> dict:
    return {
        "query_id": str(row["id"]),
        "user": row["user_id"],
        "query_type": row["query_type"],
        "realm": row["realm"],
        "status": row["status"],
        "prompt": excerpt(row["prompt"]),
        "result": excerpt(row["result"]) if row["result_type"] in ("text", "") else f"[{row['result_type']}]",
        "rank": round(float(row["rank"]), 6),
        "timestamp": row["accepted_at"].isoformat(),
    }

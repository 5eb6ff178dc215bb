"""What a query costs and the one place that writes a charge (docs/protocol.md §4)."""
import dataclasses
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Charge, Query, SystemTotals, User
from rentahal.sharding import shard_aliases

MICRO = Decimal("0.000001")


def cost_of(processing_time: float) -> Decimal:
    """Return base + seconds x rate, rounded to the ledger's precision."""
    base = Decimal(str(settings.RENTAHAL_BASE_COST_PER_QUERY))
    rate = Decimal(str(settings.RENTAHAL_COST_PER_SECOND))
    return (base + Decimal(str(processing_time)) * rate).quantize(MICRO, rounding=ROUND_HALF_UP)


@dataclasses.dataclass(frozen=True)
class Answer:
    """A query's answer, to store and charge for; `query` is the row `start_queries` returned."""

    query: Query
    result: str
    result_type: str
    worker: str


def charge(answers: list[Answer], *, using: str) -> list[Query | None]:
    """Store the answers, mark their queries done and charge for them; return each query as
    stored, or None where it was already finished (a rerun, or the same query twice).

    One statement for the whole batch, on the shard `using`, outside any transaction
    (autocommit makes it atomic): it updates the queries that are not finished yet and,
    for exactly those, inserts the ledger rows, adds to their users' totals (one update
    per user) and to the shard's totals (one update per batch). Processing time counts
    from acceptance to now (docs/protocol.md §4) and `cost_of` prices it. The unique
    constraint on `Charge.query` makes a second charge for a query fail the statement
    instead of counting.
    """
    now = timezone.now()
    unique: dict = {}
    for answer in answers:
        unique.setdefault(answer.query.pk, answer)
    firsts = list(unique.values())
    times = [(now - answer.query.accepted_at).total_seconds() for answer in firsts]
    charges, queries, users = (model._meta.db_table for model in (Charge, Query, User))
    done = Query.objects.using(using).raw(
        f"""
        WITH answer AS (
            SELECT * FROM unnest(
                %(ids)s::uuid[], %(results)s::text[], %(result_types)s::text[], %(workers)s::text[],
                %(times)s::float8[], %(costs)s::numeric[]
            ) AS given (id, result, result_type, worker, processing_time, cost)
        ), done AS (
            UPDATE {queries} AS q SET
                status = %(done)s, result = answer.result, result_type = answer.result_type,
                worker = answer.worker, finished_at = %(now)s,
                processing_time = answer.processing_time, cost = answer.cost
            FROM answer
            WHERE q.id = answer.id AND q.status <> ALL(%(finished)s::text[])
            RETURNING q.*
        ), ledger AS (
            INSERT INTO {charges} (query_id, user_id, amount, processing_time, created_at)
            SELECT id, user_id, cost, processing_time, %(now)s FROM done
        ), payers AS (
            -- Users are locked in guid order: two batches of different worker processes
            -- that share users would otherwise deadlock on them.
            SELECT guid FROM {users} WHERE guid IN (SELECT user_id FROM done) ORDER BY guid FOR UPDATE
        ), user_totals AS (
            UPDATE {users} AS payer SET
                total_query_time = payer.total_query_time + spent.processing_time,
                total_cost = payer.total_cost + spent.cost,
                query_count = payer.query_count + spent.queries
            FROM (
                SELECT user_id, sum(processing_time) AS processing_time, sum(cost) AS cost, count(*) AS queries
                FROM done GROUP BY user_id
            ) AS spent
            WHERE payer.guid = spent.user_id AND payer.guid IN (SELECT guid FROM payers)
        ), {add_to_system_totals("done")}
        SELECT * FROM done
        """,
        {
            "ids": [answer.query.pk for answer in firsts],
            "results": [answer.result for answer in firsts],
            "result_types": [answer.result_type for answer in firsts],
            "workers": [answer.worker for answer in firsts],
            "times": times,
            "costs": [cost_of(seconds) for seconds in times],
            "done": Query.Status.DONE,
            "finished": list(Query.FINISHED),
            "now": now,
        },
    )
    stored = {query.pk: query for query in done}
    return [stored.pop(answer.query.pk, None) for answer in answers]


def add_to_system_totals(rows: str, *, failed: bool = False) -> str:
    """Return the CTE `system_totals` adding the queries of the CTE `rows` to the shard's
    totals row (created on first use): as answered and charged, or as failed.

    It writes nothing when `rows` is empty, so a batch of reruns does not even lock the row.
    """
    table = SystemTotals._meta.db_table
    added = "0, 0, 0, count(*)" if failed else "count(*), sum(processing_time), sum(cost), 0"
    return f"""system_totals AS (
            INSERT INTO {table} (id, total_queries, total_processing_time, total_cost, failed_queries)
            SELECT 1, {added} FROM {rows} HAVING count(*) > 0
            ON CONFLICT (id) DO UPDATE SET
                total_queries = {table}.total_queries + EXCLUDED.total_queries,
                total_processing_time = {table}.total_processing_time + EXCLUDED.total_processing_time,
                total_cost = {table}.total_cost + EXCLUDED.total_cost,
                failed_queries = {table}.failed_queries + EXCLUDED.failed_queries
        )"""


def system_totals() -> dict:
    """Return the system-wide aggregate, summed over every shard."""
    totals = {"total_queries": 0, "total_processing_time": 0.0, "total_cost": Decimal("0"), "failed_queries": 0}
    for alias in shard_aliases():
        row = SystemTotals.objects.using(alias).aggregate(
            total_queries=Sum("total_queries"),
            total_processing_time=Sum("total_processing_time"),
            total_cost=Sum("total_cost"),
            failed_queries=Sum("failed_queries"),
        )
        for key in totals:
            totals[key] += row[key] or 0
    return totals

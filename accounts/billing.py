"""What a query costs and the one place that writes a charge (docs/protocol.md §4)."""
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db.models import Sum

from accounts.models import Charge, SystemTotals, User
from rentahal.sharding import shard_aliases

MICRO = Decimal("0.000001")


def cost_of(processing_time: float) -> Decimal:
    """Return base + seconds x rate, rounded to the ledger's precision."""
    base = Decimal(str(settings.RENTAHAL_BASE_COST_PER_QUERY))
    rate = Decimal(str(settings.RENTAHAL_COST_PER_SECOND))
    return (base + Decimal(str(processing_time)) * rate).quantize(MICRO, rounding=ROUND_HALF_UP)


def charge_for(rows: str) -> str:
    """Return the CTEs that charge for the queries the CTE `rows` returns (rows of the
    queries table, just answered, their `cost` set by `cost_of`): one ledger row each, their
    users' totals (one update per user) and the shard's totals (one update per batch).

    The statement that finishes queries (`accounts.actions.queries.finish_queries`) appends
    them, so an answer and its charge commit together or not at all. The unique constraint
    on `Charge.query` makes a second charge for a query fail that statement instead of
    counting.
    """
    charges, users = Charge._meta.db_table, User._meta.db_table
    return f"""ledger AS (
            INSERT INTO {charges} (query_id, user_id, amount, processing_time, created_at)
            SELECT id, user_id, cost, processing_time, finished_at FROM {rows}
        ), payers AS (
            -- Users are locked in guid order: two batches of different worker processes
            -- that share users would otherwise deadlock on them.
            SELECT guid FROM {users} WHERE guid IN (SELECT user_id FROM {rows}) ORDER BY guid FOR UPDATE
        ), user_totals AS (
            UPDATE {users} AS payer SET
                total_query_time = payer.total_query_time + spent.processing_time,
                total_cost = payer.total_cost + spent.cost,
                query_count = payer.query_count + spent.queries
            FROM (
                SELECT user_id, sum(processing_time) AS processing_time, sum(cost) AS cost, count(*) AS queries
                FROM {rows} GROUP BY user_id
            ) AS spent
            WHERE payer.guid = spent.user_id AND payer.guid IN (SELECT guid FROM payers)
        ), {add_to_system_totals(rows)}"""


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

"""What a query costs and the one place that writes a charge (PROTOCOL.md section 4)."""
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import connections
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


def charge(query: Query, processing_time: float, *, using: str) -> Decimal:
    """Write the ledger row, the query's cost and the user and system totals; return the amount.

    Call inside the transaction that stores the result: the unique constraint on
    `Charge.query` makes a second charge for the same query fail instead of counting.
    The four writes touch four tables and go as one statement, one round trip.
    """
    amount = cost_of(processing_time)
    charges, queries, users = (model._meta.db_table for model in (Charge, Query, User))
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"""
            WITH ledger AS (
                INSERT INTO {charges} (query_id, user_id, amount, processing_time, created_at)
                VALUES (%(query)s, %(user)s, %(amount)s, %(time)s, %(now)s)
                RETURNING query_id
            ), query_cost AS (
                UPDATE {queries} SET cost = %(amount)s WHERE id IN (SELECT query_id FROM ledger)
            ), user_totals AS (
                UPDATE {users} SET
                    total_query_time = total_query_time + %(time)s,
                    total_cost = total_cost + %(amount)s,
                    query_count = query_count + 1
                WHERE guid = %(user)s
            )
            {system_totals_upsert()}
            """,
            {
                "query": query.pk,
                "user": query.user_id,
                "amount": amount,
                "time": processing_time,
                "now": timezone.now(),
                "queries": 1,
                "failed": 0,
            },
        )
    return amount


def count_failure(*, using: str) -> None:
    add_to_system_totals(using=using, failed=1)


def add_to_system_totals(*, using: str, queries=0, processing_time=0.0, cost=Decimal("0"), failed=0) -> None:
    """Add to the shard's totals row, creating it on first use, in one statement."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            system_totals_upsert(),
            {"queries": queries, "time": processing_time, "amount": cost, "failed": failed},
        )


def system_totals_upsert() -> str:
    """Return the upsert of the shard's totals row, with named parameters queries, time,
    amount and failed."""
    table = SystemTotals._meta.db_table
    return f"""
        INSERT INTO {table} (id, total_queries, total_processing_time, total_cost, failed_queries)
        VALUES (1, %(queries)s, %(time)s, %(amount)s, %(failed)s)
        ON CONFLICT (id) DO UPDATE SET
            total_queries = {table}.total_queries + EXCLUDED.total_queries,
            total_processing_time = {table}.total_processing_time + EXCLUDED.total_processing_time,
            total_cost = {table}.total_cost + EXCLUDED.total_cost,
            failed_queries = {table}.failed_queries + EXCLUDED.failed_queries
        """


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

"""What a query costs and the one place that writes a charge (PROTOCOL.md section 4)."""
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import connections
from django.db.models import F, Sum

from accounts.models import Charge, Query, SystemTotals, User
from rentahal.sharding import shard_aliases

MICRO = Decimal("0.000001")


def cost_of(processing_time: float) -> Decimal:
    """Return base + seconds x rate, rounded to the ledger's precision."""
    base = Decimal(str(settings.RENTAHAL_BASE_COST_PER_QUERY))
    rate = Decimal(str(settings.RENTAHAL_COST_PER_SECOND))
    return (base + Decimal(str(processing_time)) * rate).quantize(MICRO, rounding=ROUND_HALF_UP)


def charge(query: Query, processing_time: float, *, using: str) -> Decimal:
    """Write the ledger row and update user and system totals; return the amount.

    Call inside the transaction that stores the result: the unique constraint on
    `Charge.query` makes a second charge for the same query fail instead of counting.
    """
    amount = cost_of(processing_time)
    Charge.objects.using(using).create(
        query_id=query.pk, user_id=query.user_id, amount=amount, processing_time=processing_time
    )
    User.objects.using(using).filter(pk=query.user_id).update(
        total_query_time=F("total_query_time") + processing_time,
        total_cost=F("total_cost") + amount,
        query_count=F("query_count") + 1,
    )
    add_to_system_totals(using=using, queries=1, processing_time=processing_time, cost=amount)
    return amount


def count_failure(*, using: str) -> None:
    add_to_system_totals(using=using, failed=1)


def add_to_system_totals(*, using: str, queries=0, processing_time=0.0, cost=Decimal("0"), failed=0) -> None:
    """Add to the shard's totals row, creating it on first use, in one statement."""
    table = SystemTotals._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table} (id, total_queries, total_processing_time, total_cost, failed_queries)
            VALUES (1, %s, %s, %s, %s)
            ON CONFLICT (id) DO UPDATE SET
                total_queries = {table}.total_queries + EXCLUDED.total_queries,
                total_processing_time = {table}.total_processing_time + EXCLUDED.total_processing_time,
                total_cost = {table}.total_cost + EXCLUDED.total_cost,
                failed_queries = {table}.failed_queries + EXCLUDED.failed_queries
            """,
            [queries, processing_time, cost, failed],
        )


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

"""Where per-user rows are: counts per shard and prefix, the verify report, rebalance plans."""
import dataclasses

from django.db.models import Count
from django.db.models.functions import Substr

from accounts.models import Charge, Query, User
from rentahal.models import ShardMapEntry, ShardMove
from rentahal.sharding import default_shard_for_prefix, shard_aliases

MODELS = (("users", User, "guid"), ("queries", Query, "user_id"), ("charges", Charge, "user_id"))


@dataclasses.dataclass
class Rows:
    users: int = 0
    queries: int = 0
    charges: int = 0

    @property
    def total(self) -> int:
        return self.users + self.queries + self.charges

    def add(self, other: "Rows") -> None:
        self.users += other.users
        self.queries += other.queries
        self.charges += other.charges

    def __str__(self):
        return f"{self.users} users, {self.queries} queries, {self.charges} charges"


def rows_by_prefix(alias: str) -> dict[str, Rows]:
    """Return the row counts of one shard per guid prefix, three GROUP BY queries."""
    found: dict[str, Rows] = {}
    for name, model, field in MODELS:
        grouped = (
            model.objects.using(alias)
            .annotate(prefix=Substr(field, 1, 2))
            .values("prefix")
            .annotate(rows=Count("pk"))
            .values_list("prefix", "rows")
        )
        for prefix, rows in grouped:
            setattr(found.setdefault(prefix, Rows()), name, rows)
    return found


def current_map() -> dict[str, str]:
    """Return the recorded map (read from `default`, not the cache)."""
    return dict(ShardMapEntry.objects.using("default").values_list("prefix", "shard"))


def mapped_shard(shard_map: dict[str, str], prefix: str) -> str:
    return shard_map.get(prefix) or default_shard_for_prefix(prefix)


# -- verify -------------------------------------------------------------------------------

@dataclasses.dataclass
class Report:
    problems: list[str] = dataclasses.field(default_factory=list)
    moves: list[str] = dataclasses.field(default_factory=list)

    @property
    def is_clean(self) -> bool:
        return not self.problems and not self.moves


def verify(progress=lambda message: None) -> Report:
    """Check every row is on exactly the shard the map names, and describe unfinished moves."""
    report = Report()
    shard_map = current_map()
    aliases = shard_aliases()
    for prefix, alias in sorted(shard_map.items()):
        if alias not in aliases:
            report.problems.append(f"prefix {prefix}: the map names {alias}, which is not configured")
    active = {move.prefix: move for move in ShardMove.objects.using("default").filter(state__in=ShardMove.ACTIVE)}
    for prefix, move in sorted(active.items()):
        where = move.source if move.state == ShardMove.State.COPYING else move.target
        leftover = "partial copy on" if move.state == ShardMove.State.COPYING else "old rows still on"
        side = move.target if move.state == ShardMove.State.COPYING else move.source
        report.moves.append(
            f"prefix {prefix}: move {move.source} → {move.target} stopped while {move.state}; the map names "
            f"{where}, {leftover} {side}. Run `manage.py move_shard_prefix {prefix} {move.target} --resume` "
            f"or `--rollback`."
        )
    placements: dict[str, dict[str, Rows]] = {}
    for alias in aliases:
        by_prefix = rows_by_prefix(alias)
        progress(f"{alias}: {sum(rows.total for rows in by_prefix.values())} rows in {len(by_prefix)} prefixes")
        for prefix, rows in by_prefix.items():
            placements.setdefault(prefix, {})[alias] = rows
    for prefix, by_alias in sorted(placements.items()):
        home = mapped_shard(shard_map, prefix)
        move = active.get(prefix)
        expected = {move.source, move.target} if move else {home}
        for alias, rows in sorted(by_alias.items()):
            if alias not in expected:
                report.problems.append(f"prefix {prefix}: {rows} on {alias}, but the map names {home} (orphans)")
        if not move and len(by_alias) > 1:
            report.problems.extend(duplicates(prefix, by_alias))
    return report


def duplicates(prefix: str, by_alias: dict[str, Rows]) -> list[str]:
    """Name users of the prefix that have rows on more than one shard."""
    seen: dict[str, list[str]] = {}
    for alias in by_alias:
        for guid in User.objects.using(alias).filter(guid__startswith=prefix).values_list("guid", flat=True):
            seen.setdefault(guid, []).append(alias)
    return [f"user {guid}: duplicated on {', '.join(aliases)}" for guid, aliases in sorted(seen.items()) if len(aliases) > 1]


# -- rebalance ----------------------------------------------------------------------------

@dataclasses.dataclass
class PlannedMove:
    prefix: str
    source: str
    target: str
    rows: int

    def __str__(self):
        return f"move {self.prefix} {self.source} → {self.target} ({self.rows} rows)"


def shard_loads() -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Return rows per shard and, per shard, rows per prefix that the map places there."""
    shard_map = current_map()
    loads = {alias: 0 for alias in shard_aliases()}
    prefixes: dict[str, dict[str, int]] = {alias: {} for alias in loads}
    for alias in loads:
        for prefix, rows in rows_by_prefix(alias).items():
            if mapped_shard(shard_map, prefix) == alias:
                prefixes[alias][prefix] = rows.total
                loads[alias] += rows.total
    return loads, prefixes


def plan_rebalance() -> list[PlannedMove]:
    """Plan prefix moves that even out rows per shard, greedily, heaviest shard first.

    Each step moves the prefix of the heaviest shard that brings it and the lightest shard
    closest to level, and only if that narrows the gap; prefixes are the unit of a move,
    so shards end level to within one prefix's rows.
    """
    loads, prefixes = shard_loads()
    plan: list[PlannedMove] = []
    for _ in range(256):
        heavy = max(loads, key=lambda alias: loads[alias])
        light = min(loads, key=lambda alias: loads[alias])
        gap = loads[heavy] - loads[light]
        planned = {move.prefix for move in plan}
        candidates = [
            (prefix, rows) for prefix, rows in prefixes[heavy].items() if 0 < rows < gap and prefix not in planned
        ]
        if not candidates:
            break
        prefix, rows = min(candidates, key=lambda item: (abs(gap - 2 * item[1]), item[0]))
        plan.append(PlannedMove(prefix, heavy, light, rows))
        del prefixes[heavy][prefix]
        prefixes[light][prefix] = rows
        loads[heavy] -= rows
        loads[light] += rows
    return plan

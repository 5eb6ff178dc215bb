"""Where per-user rows are: counts per shard and prefix, the verify report, rebalance plans.

The rows counted are those of the models that move with their user
(`rentahal.sharded_models.moved_models`), named by their plural (users, queries, charges).
"""
import dataclasses

from django.db.models import Count
from django.db.models.functions import Substr

from rentahal.models import ShardMapEntry, ShardMove
from rentahal.sharded_models import identity_field, moved_models, plural_name, prefix_rows, shard_key_field
from rentahal.sharding import default_shard_for_prefix, shard_aliases


class Rows(dict):
    """Row counts of each moved model, by its plural name, in the order the models move."""

    def __init__(self):
        super().__init__((plural_name(model), 0) for model in moved_models())

    @property
    def total(self) -> int:
        return sum(self.values())

    def add(self, other: "Rows") -> None:
        for name, number in other.items():
            self[name] += number

    def __str__(self):
        return ", ".join(f"{number} {name}" for name, number in self.items())


def rows_by_prefix(alias: str) -> dict[str, Rows]:
    """Return the row counts of one shard per guid prefix, one GROUP BY query per model."""
    found: dict[str, Rows] = {}
    for model in moved_models():
        key = shard_key_field(model).attname
        grouped = (
            model.objects.using(alias)
            .annotate(prefix=Substr(key, 1, 2))
            .values("prefix")
            .annotate(rows=Count("pk"))
            .values_list("prefix", "rows")
        )
        for prefix, rows in grouped:
            found.setdefault(prefix, Rows())[plural_name(model)] = rows
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
    """Name the rows of the prefix that are on more than one shard, model by model."""
    found = []
    for model in moved_models():
        identity = identity_field(model).attname
        seen: dict[object, list[str]] = {}
        for alias in by_alias:
            for value in prefix_rows(model, alias, prefix).values_list(identity, flat=True):
                seen.setdefault(value, []).append(alias)
        found += [
            f"{model._meta.verbose_name} {value}: duplicated on {', '.join(aliases)}"
            for value, aliases in sorted(seen.items())
            if len(aliases) > 1
        ]
    return found


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
    """Plan prefix moves that even out rows over all shards (`plan_moves`)."""
    _, placement = shard_loads()
    return plan_moves(placement)


def plan_moves(placement: dict[str, dict[str, int]]) -> list[PlannedMove]:
    """Plan prefix moves that even out rows over all shards, given rows per prefix per shard.

    Each step makes the one prefix move, between any heavier and any lighter shard, that
    most lowers the sum of the squared shard loads (w rows moved across a gap of g lower it
    by 2w(g - w): only a prefix lighter than the gap helps), until no move helps. The plan
    then leaves no prefix lighter than the gap between its shard and any lighter one, so
    the heaviest shard ends within its lightest prefix's rows of the lightest shard, and
    every shard within that of the mean. A prefix the search moves twice is planned once,
    straight to where it ended; each step lowers that sum, so the search ends.
    """
    loads = {alias: sum(rows.values()) for alias, rows in placement.items()}
    weight = {prefix: rows for by_prefix in placement.values() for prefix, rows in by_prefix.items()}
    home = {prefix: alias for alias, by_prefix in placement.items() for prefix in by_prefix}
    where = dict(home)
    first_moved: list[str] = []

    def gain(prefix: str, target: str) -> int:
        return weight[prefix] * (loads[where[prefix]] - loads[target] - weight[prefix])

    while True:
        # The largest gain first, then the lowest prefix and shard, so a plan is repeatable.
        loss, prefix, target = min(((-gain(prefix, target), prefix, target) for prefix in weight for target in loads),
                                   default=(0, "", ""))
        if loss >= 0:
            break
        loads[where[prefix]] -= weight[prefix]
        loads[target] += weight[prefix]
        where[prefix] = target
        if prefix not in first_moved:
            first_moved.append(prefix)
    return [
        PlannedMove(prefix, home[prefix], where[prefix], weight[prefix])
        for prefix in first_moved
        if where[prefix] != home[prefix]
    ]

"""Copying one guid prefix's rows between two shards, for the mover (`rentahal.shard_moves`):
the full sync, the delta since a change mark (`rentahal.change_numbers`), and the delete.

What is copied is what the apps declared (`rentahal.sharded_models`): each moved model,
after the models its rows point at, comparing the fields its declaration names.
"""
from django.db import connections, models, transaction
from psycopg.types.json import Jsonb

from rentahal.change_numbers import change_field, rows_changed_since
from rentahal.sharded_models import identity_field, moved_models, plural_name, prefix_rows, sharded_parents

BATCH = 200


def copied_fields(model) -> list:
    """Return the fields a move writes, the identity first; per-database primary keys and
    change numbers stay behind (the target stamps its own)."""
    identity = identity_field(model)
    changes = change_field(model)
    rest = [field for field in model._meta.concrete_fields if field is not identity and field is not changes]
    if identity is not model._meta.pk:
        rest = [field for field in rest if not field.primary_key]
    return [identity, *rest]


def compared_fields(model) -> list:
    """Return the fields a move compares: the identity, what the model says changes, its parents."""
    declared = model.sharding.compared
    if declared is None and not model.sharding.append_only:
        return copied_fields(model)
    names = declared or ()
    fields = [identity_field(model), *(model._meta.get_field(name) for name in names)]
    parents = sharded_parents(model)
    fields += [field for field in model._meta.concrete_fields if field.many_to_one and field.related_model in parents]
    return list(dict.fromkeys(fields))


def sync_prefix(prefix: str, source: str, target: str) -> dict[str, int]:
    """Make the target's rows of the prefix equal the source's; return what was written.

    Each moved model is synced after the models its rows point at (users, then their
    queries, then charges), comparing the fields its declaration names. Rows on the target
    that the source does not have are leftovers of an earlier attempt and are deleted.
    """
    counts: dict[str, int] = {}
    source_rows: dict = {}
    target_rows: dict = {}
    models = moved_models()
    for model in models:
        compared = compared_fields(model)
        names = [field.attname for field in compared]
        source_rows[model] = {row[0]: row for row in prefix_rows(model, source, prefix).values_list(*names)}
        target_rows[model] = {row[0]: row for row in prefix_rows(model, target, prefix).values_list(*names)}
        # Outside the fence the source keeps changing between these reads: a row is copied
        # only if the rows it points at were read too; the fenced pass gets the rest.
        parents = [
            (position, field.related_model)
            for position, field in enumerate(compared)
            if field.many_to_one and field.related_model in source_rows
        ]
        changed = [
            identity
            for identity, row in source_rows[model].items()
            if target_rows[model].get(identity) != row
            and all(row[position] in source_rows[parent] for position, parent in parents)
        ]
        copy_rows_of(model, changed, source, target, source_rows[model])
        counts[plural_name(model)] = len(changed)

    counts["stale"] = 0
    with transaction.atomic(using=target):
        for model in reversed(models):
            stale = set(target_rows[model]) - set(source_rows[model])
            identity = identity_field(model).attname
            counts["stale"] += prefix_rows(model, target, prefix).filter(**{f"{identity}__in": stale}).delete()[0]
    return counts


def copy_changes(prefix: str, source: str, target: str, watermarks: dict[str, int]) -> dict[str, int]:
    """Copy the prefix's rows stamped on the source after `watermarks` (`mark_changes`),
    parents first; return how many rows of each model were copied.

    Writers never delete per-user rows, so nothing the source lost needs deleting here.
    """
    counts = {}
    for model in moved_models():
        fields = copied_fields(model)
        changed = rows_changed_since(model, source, prefix, watermarks[model._meta.label])
        rows = list(changed.values_list(*(field.attname for field in fields)))
        upsert(
            target, model, [field.column for field in fields], rows,
            conflict=identity_field(model).column, update=not model.sharding.append_only,
        )
        counts[plural_name(model)] = len(rows)
    return counts


def copy_rows_of(model, identities: list, source: str, target: str, compared_rows: dict) -> None:
    """Write these rows of one model from source to target, in batches."""
    fields = copied_fields(model)
    columns = [field.column for field in fields]
    conflict = identity_field(model).column
    update = not model.sharding.append_only
    if compared_fields(model) == fields:
        rows = [compared_rows[identity] for identity in identities]
        upsert(target, model, columns, rows, conflict=conflict, update=update)
        return
    identity = identity_field(model).attname
    names = [field.attname for field in fields]
    for start in range(0, len(identities), BATCH):
        batch = model.objects.using(source).filter(**{f"{identity}__in": identities[start:start + BATCH]})
        upsert(target, model, columns, list(batch.values_list(*names)), conflict=conflict, update=update)


def upsert(alias: str, model, columns: list[str], rows: list[tuple], *, conflict: str, update: bool = True) -> None:
    """Insert rows as they are (no auto_now rewriting), updating or keeping ones already there."""
    if not rows:
        return
    table = model._meta.db_table
    names = ", ".join(f'"{column}"' for column in columns)
    placeholders = ", ".join(["%s"] * len(columns))
    if update:
        assignments = ", ".join(f'"{column}" = EXCLUDED."{column}"' for column in columns if column != conflict)
        on_conflict = f"DO UPDATE SET {assignments}"
    else:
        on_conflict = "DO NOTHING"
    sql = f'INSERT INTO "{table}" ({names}) VALUES ({placeholders}) ON CONFLICT ("{conflict}") {on_conflict}'
    # Rows read back through the ORM hold JSON columns as Python values; the driver is told
    # they are JSON, as the ORM would tell it on a save.
    json_columns = {field.column for field in model._meta.concrete_fields if isinstance(field, models.JSONField)}
    json_indexes = [index for index, column in enumerate(columns) if column in json_columns]
    if json_indexes:
        rows = [
            tuple(Jsonb(value) if index in json_indexes and value is not None else value for index, value in enumerate(row))
            for row in rows
        ]
    with transaction.atomic(using=alias):
        with connections[alias].cursor() as cursor:
            cursor.executemany(sql, rows)


def delete_prefix(prefix: str, alias: str) -> dict[str, int]:
    """Delete every row of the prefix from one shard, rows before the rows they point at."""
    removed = {}
    with transaction.atomic(using=alias):
        for model in reversed(moved_models()):
            removed[plural_name(model)] = prefix_rows(model, alias, prefix).delete()[0]
    return dict(reversed(removed.items()))


def describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{number} {name}" for name, number in counts.items())

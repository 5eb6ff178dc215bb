"""Change numbers: every insert and update of a moved row stamps it with the next number of
its table's own sequence, so a shard move copies under its fence only the rows written since
its bulk copy, however many rows the prefix has (`rentahal.shard_moves`).

A trigger stamps the number, not the writers: accounts' writers are raw SQL statements
(`accounts/actions/queries.py`, `accounts/billing.py`) as well as ORM saves, and a trigger
sees them all. Writers never delete per-user rows (only the mover does), so the numbers of
the rows that exist say everything that changed.
"""
from django.db import connections
from django.db.migrations.operations.base import Operation
from django.db.models import F, Index
from django.db.models.functions import Substr


def change_field(model):
    """Return the field a moved model declares its change numbers in (`Sharded.changes`)."""
    return model._meta.get_field(model.sharding.changes)


def last_change_number(model, alias: str) -> int:
    """Return the last change number handed out on this shard for this model (0 if none)."""
    table, column = model._meta.db_table, change_field(model).column
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence(%s, %s)::regclass), 0)", [table, column]
        )
        return cursor.fetchone()[0]


def rows_changed_since(model, alias: str, prefix: str, number: int):
    """Return the prefix's rows of one moved model on one shard stamped after `number`.

    The filter is the expression `TrackChanges` indexes, so it reads only those rows.
    """
    key = model._meta.get_field(model.sharding.key).attname
    return (
        model.objects.using(alias)
        .alias(guid_prefix=Substr(key, 1, 2))
        .filter(guid_prefix=prefix, **{f"{model.sharding.changes}__gt": number})
    )


class TrackChanges(Operation):
    """Make a moved model's table stamp `changes` on every insert and update, from a sequence
    the column owns, and index the stamps by guid prefix (the two characters of `key`).

    Used in the migration that adds the `changes` field; like the table, it exists only on
    the shards (the router's `allow_migrate`).
    """

    reversible = True

    def __init__(self, model_name: str, *, key: str, changes: str):
        self.model_name = model_name
        self.key = key
        self.changes = changes

    def deconstruct(self):
        return self.__class__.__qualname__, [self.model_name], {"key": self.key, "changes": self.changes}

    def state_forwards(self, app_label, state):
        """Change nothing Django models: the trigger and the index live only in the database."""

    def names(self, model) -> tuple[str, str, str, str]:
        """Return the table, the stamped column, its sequence and the stamping function."""
        table, column = model._meta.db_table, model._meta.get_field(self.changes).column
        return table, column, f"{table}_{column}_seq", f"{table}_stamp_{column}"

    def index(self, model) -> Index:
        table, column, _, _ = self.names(model)
        return Index(Substr(self.key, 1, 2), F(self.changes), name=f"{table}_{column}_prefix")

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        table, column, sequence, function = self.names(model)
        schema_editor.execute(f'CREATE SEQUENCE "{sequence}" OWNED BY "{table}"."{column}"')
        schema_editor.execute(
            f'CREATE FUNCTION "{function}"() RETURNS trigger LANGUAGE plpgsql AS '
            f"$$ BEGIN NEW.\"{column}\" := nextval('\"{sequence}\"'); RETURN NEW; END $$"
        )
        schema_editor.execute(
            f'CREATE TRIGGER "stamp_{column}" BEFORE INSERT OR UPDATE ON "{table}" '
            f'FOR EACH ROW EXECUTE FUNCTION "{function}"()'
        )
        schema_editor.add_index(model, self.index(model))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        table, column, sequence, function = self.names(model)
        schema_editor.remove_index(model, self.index(model))
        schema_editor.execute(f'DROP TRIGGER "stamp_{column}" ON "{table}"')
        schema_editor.execute(f'DROP FUNCTION "{function}"()')
        schema_editor.execute(f'DROP SEQUENCE "{sequence}"')

    def describe(self):
        return f"Stamp {self.model_name}.{self.changes} on every write and index it by guid prefix"

    @property
    def migration_name_fragment(self):
        return f"track_changes_{self.model_name}"

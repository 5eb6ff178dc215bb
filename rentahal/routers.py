"""The database router: shared tables on `default`, per-user tables on their shard."""
from rentahal.sharding import is_sharded, shard_aliases


class ShardRouter:
    """Send per-user models to a shard and everything else to `default`.

    Per-user querysets name their shard explicitly (`.using(shard_for_guid(guid))`);
    the router only follows an instance to the database it came from, so a related
    lookup never crosses into another shard.
    """

    def db_for_read(self, model, **hints):
        instance = hints.get("instance")
        if is_sharded(model) and instance is not None and instance._state.db:
            return instance._state.db
        return None if is_sharded(model) else "default"

    db_for_write = db_for_read

    def allow_relation(self, obj1, obj2, **hints):
        return obj1._state.db == obj2._state.db

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if model_name is None:
            return None
        label = f"{app_label}.{model_name}"
        from django.apps import apps

        try:
            model = apps.get_model(label)
        except LookupError:
            return None
        if is_sharded(model):
            return db in shard_aliases()
        return db == "default"

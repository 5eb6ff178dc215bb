"""The database router: shared tables on `default`, per-user tables on their shard."""
from rentahal.sharded_models import is_sharded, shard_key_of
from rentahal.sharding import shard_aliases, shard_for_guid


class ShardRouter:
    """Send per-user models to their shard and everything else to `default`.

    A per-user queryset that filters on a guid or query id carries it as the `shard_key`
    hint (`rentahal.sharded_models.ShardedQuerySet`); actions name their shard outright
    with `.using(alias)`. An instance loaded from a shard stays there, so a related lookup
    never crosses into another shard, and a new one goes to the shard of its guid (the field
    its model's `sharding` declaration names as its key). With shards configured, a
    per-user query with no key falls through to `default`, which has no per-user tables,
    and fails loudly rather than reading the wrong shard.
    """

    def db_for_read(self, model, **hints):
        if not is_sharded(model):
            return "default"
        aliases = shard_aliases()
        if aliases == ["default"]:
            return "default"
        if hints.get("shard_key"):
            return shard_for_guid(hints["shard_key"])
        instance = hints.get("instance")
        if instance is None:
            return None
        if instance._state.db:
            return instance._state.db
        guid = shard_key_of(instance)
        return shard_for_guid(guid) if guid else None

    db_for_write = db_for_read

    def allow_relation(self, obj1, obj2, **hints):
        return obj1._state.db == obj2._state.db

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if model_name is None:
            return None
        from django.apps import apps

        try:
            model = apps.get_model(app_label, model_name)
        except LookupError:
            return None
        if is_sharded(model):
            return db in shard_aliases()
        return db == "default"

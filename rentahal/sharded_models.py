"""What is sharded, as the apps declare it: the `Sharded` declaration a per-user model carries,
its discovery through the app registry, and the queryset that routes itself by it.

Plumbing never names an app's models: the router (`rentahal.routers`), the mover
(`rentahal.shard_moves`) and the placement commands (`rentahal.shard_placement`) ask this
module which models there are, the way the admin site finds what each app registered.
"""
import dataclasses
import graphlib

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import models

from rentahal.sharding import guid_prefix, has_shards, is_valid_prefix, shard_aliases, shard_for_guid


@dataclasses.dataclass(frozen=True)
class Sharded:
    """Declare, as a model's `sharding` attribute, that its rows live on the shards.

    The router, the mover and the placement commands find the declarations through the
    app registry (`sharded_models`), so plumbing never names an app's models.

    key: the field holding the user's guid. A move carries a user's rows by it. None
        declares rows each shard keeps for itself (per-shard counters): they live on
        every shard and a move leaves them where they are.
    lookups: the filter lookups whose value carries a guid prefix (a guid, or an id made
        by `new_query_id`), so `ShardedQuerySet` can route a query by them.
    compared: the fields a move compares to find rows that changed since it copied them;
        None compares every field. The identity and foreign keys are always compared.
    identity: a unique field naming a row on every shard; None means the primary key.
        Name another one when primary keys are per database (auto-increment).
    append_only: rows are written once and never updated, so a move only adds missing ones.
    changes: the BigIntegerField a trigger stamps on every write (`rentahal.change_numbers`,
        set up by its `TrackChanges` migration operation); required with a key, because a
        move's fenced step copies only the rows stamped since its bulk copy.
    """

    key: str | None
    lookups: tuple[str, ...] = ()
    compared: tuple[str, ...] | None = None
    identity: str | None = None
    append_only: bool = False
    changes: str | None = None

    def __post_init__(self):
        if self.key is not None and self.changes is None:
            raise ImproperlyConfigured(
                f"Sharded(key={self.key!r}) must name its change-number field (changes=...): a move copies "
                f"rows by it; add the field and a rentahal.change_numbers.TrackChanges migration operation."
            )

    @property
    def moves_with_user(self) -> bool:
        return self.key is not None


def is_sharded(model) -> bool:
    return isinstance(getattr(model, "sharding", None), Sharded)


def sharded_models() -> list:
    """Return every installed model that declares `sharding`."""
    return [model for model in apps.get_models() if is_sharded(model)]


def moved_models() -> list:
    """Return the models whose rows move with their user, each after the models it points at.

    Copying in this order never writes a row before the row its foreign key names;
    deleting goes in the reverse order.
    """
    moved = [model for model in sharded_models() if model.sharding.moves_with_user]
    graph = {model: {parent for parent in sharded_parents(model) if parent is not model} for model in moved}
    return list(graphlib.TopologicalSorter(graph).static_order())


def sharded_parents(model) -> list:
    """Return the moved models this model's foreign keys point at."""
    return [
        field.related_model
        for field in model._meta.concrete_fields
        if field.many_to_one and is_sharded(field.related_model) and field.related_model.sharding.moves_with_user
    ]


def shard_key_field(model):
    """Return the field of a moved model that holds its user's guid."""
    return model._meta.get_field(model.sharding.key)


def identity_field(model):
    """Return the field that names a row on every shard (see `Sharded.identity`)."""
    return model._meta.get_field(model.sharding.identity) if model.sharding.identity else model._meta.pk


def plural_name(model) -> str:
    """Return how operators see a model's rows counted: users, queries, charges."""
    return str(model._meta.verbose_name_plural)


def prefix_rows(model, alias: str, prefix: str):
    """Return the prefix's rows of one moved model on one shard, by an indexed range on its key.

    Guids are lowercase hex, so every guid starting with `ab` sorts in [`ab`, `abg`).
    """
    key = shard_key_field(model).attname
    return model.objects.using(alias).filter(**{f"{key}__gte": prefix, f"{key}__lt": f"{prefix}g"})


def shard_key_of(instance) -> str | None:
    """Return the guid an unsaved instance of a sharded model belongs to, if it says."""
    if not instance.sharding.moves_with_user:
        return None
    return getattr(instance, shard_key_field(instance).attname, None)


# -- querysets that know their shard ------------------------------------------------------

class ShardedQuerySet(models.QuerySet):
    """A queryset of a per-user model that routes itself by the guid or query id it filters on.

    `Query.objects.get(pk=query_id)` or `Charge.objects.filter(user=user)` carry the shard
    key as a router hint (`shard_key`), so `ShardRouter` sends them to the right shard
    without the caller naming it. The model's `sharding` declaration lists which lookups
    are shard keys (`Sharded.lookups`). A query with no key has no shard: it must say `.using(alias)`
    or loop over `shard_aliases()`, except `count()`, which then sums every shard (rows
    of a prefix caught mid-move are counted on both shards, as `manage.py shards` shows).
    """

    def _has_shard(self) -> bool:
        return self._db is not None or "shard_key" in self._hints or "instance" in self._hints

    def count(self):
        if not self._has_shard() and has_shards():
            return sum(self.using(alias).count() for alias in shard_aliases())
        return super().count()

    def _filter_or_exclude(self, negate, args, kwargs):
        clone = super()._filter_or_exclude(negate, args, kwargs)
        if not negate and not self._has_shard():
            key = _shard_key(self.model, kwargs)
            if key is not None:
                # _clone() shares the hints dict with its parent, so replace it, never mutate.
                clone._hints = {**clone._hints, "shard_key": key}
        return clone

    def create(self, **kwargs):
        if self._db is None:
            key = _shard_key(self.model, kwargs)
            if key is not None:
                return self.using(shard_for_guid(key)).create(**kwargs)
        return super().create(**kwargs)


def _shard_key(model, lookups: dict) -> str | None:
    for name in model.sharding.lookups:
        value = lookups.get(name)
        if value is None:
            continue
        if isinstance(value, models.Model):
            value = value.pk
        key = str(value)
        if is_valid_prefix(guid_prefix(key)):
            return key
    return None

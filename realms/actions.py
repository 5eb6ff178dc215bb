"""Every write to realms (registry, backups), and broadcasts to their users; a query's own
steps are in `realms.lifecycle`.

A realm's writes take the actor keyword-only (`rentahal.actors`), commit in one durable
transaction on `default`, publish `realm.changed` once committed (`rentahal.pushes`) and
refuse with `rentahal.errors.BrokerError` subclasses."""
import logging

from django.core.exceptions import ValidationError
from django.db import transaction

from realms.models import Realm, RealmBackup, find_backup_loop
from rentahal.actors import describe_actor
from rentahal.errors import BrokerError, Invalid
from rentahal.pushes import BROADCAST_GROUP, REALM_EVENTS, frame_event, send_event, send_event_on_commit

logger = logging.getLogger(__name__)


REALM_FIELDS = ("name", "query_type", "min_workers", "max_workers", "queue_limit")


def create_realm(
    *, name: str, query_type: str, backups: dict[str, list[Realm]] | None = None, acting_user=None, **fields
) -> Realm:
    """Create a realm; if another realm was primary for the type, the type moves to this one."""
    if not query_type:
        raise Invalid(fields={"query_type": ["A realm needs a primary query type."]}, code="no_primary_type")
    with transaction.atomic(using="default", durable=True):
        take_over_query_type(query_type, realm=None, acting_user=acting_user)
        realm = Realm(name=name, query_type=query_type, **fields)
        save_realm(realm)
        for backup_type, backup_realms in (backups or {}).items():
            replace_backups(realm, backup_type, backup_realms)
        publish_realm_change(realm.name, "saved", acting_user)
    logger.info("realm %s created, primary for %s, by %s", realm.name, query_type, describe_actor(acting_user))
    return realm


def update_realm(realm: Realm, *, backups: dict[str, list[Realm]] | None = None, acting_user=None, **fields) -> Realm:
    """Change a realm's settings and, for each query type given, its ordered backups; a new
    primary type is routed to it (PATCH semantics)."""
    unknown = set(fields) - set(REALM_FIELDS)
    if unknown:
        raise BrokerError(f"Unknown realm field(s): {', '.join(sorted(unknown))}.", code="bad_field")
    with transaction.atomic(using="default", durable=True):
        realm = Realm.objects.select_for_update().get(pk=realm.pk)
        if fields.get("name", realm.name) != realm.name:
            raise Invalid(
                fields={"name": ["A realm cannot be renamed: its queue and its queries' records carry the name."]},
                code="rename",
            )
        new_type = fields.get("query_type", realm.query_type)
        if "query_type" in fields and not new_type:
            raise Invalid(fields={"query_type": ["A realm needs a primary query type."]}, code="no_primary_type")
        if new_type != realm.query_type and not realm.query_type:
            # Realm.clean refuses a primary realm changing type, so only a backup-only
            # realm takes a type over.
            take_over_query_type(new_type, realm=realm, acting_user=acting_user)
        for field, value in fields.items():
            setattr(realm, field, value)
        save_realm(realm)
        for backup_type, backup_realms in (backups or {}).items():
            replace_backups(realm, backup_type, backup_realms)
        publish_realm_change(realm.name, "saved", acting_user)
    logger.info(
        "realm %s updated by %s: %s", realm.name, describe_actor(acting_user), ", ".join(sorted(fields)) or "backups"
    )
    return realm


def delete_realm(realm: Realm, *, acting_user=None) -> None:
    """Delete a realm that is primary for no query type."""
    with transaction.atomic(using="default", durable=True):
        realm = Realm.objects.select_for_update().get(pk=realm.pk)
        if realm.query_type:
            raise BrokerError(
                f"{realm.name} is the primary realm for {realm.query_type} queries and cannot be deleted; "
                f"make another realm primary for {realm.query_type} first.",
                code="realm_is_primary",
            )
        realm.delete()
        publish_realm_change(realm.name, "deleted", acting_user)
    logger.info("realm %s deleted by %s", realm.name, describe_actor(acting_user))


def replace_backups(realm: Realm, query_type: str, backups: list[Realm]) -> None:
    """Replace the realm's ordered backups for a query type, refusing a chain that loops;
    a step of `create_realm` and `update_realm`, inside their transaction."""
    if len({backup.pk for backup in backups}) != len(backups):
        raise Invalid(fields={"backups": [f"A backup realm is listed twice for {query_type}."]}, code="duplicate_backup")
    loop = find_backup_loop(realm, query_type, backups, replace=True)
    if loop:
        raise Invalid(fields={"backups": [f"Backup chain for {query_type} loops: {' → '.join(loop)}."]}, code="backup_loop")
    RealmBackup.objects.filter(realm=realm, query_type=query_type).delete()
    RealmBackup.objects.bulk_create(
        RealmBackup(realm=realm, query_type=query_type, backup=backup, position=position)
        for position, backup in enumerate(backups)
    )


def take_over_query_type(query_type: str, *, realm: Realm | None, acting_user) -> None:
    """Clear the type from the realm currently primary for it, so `realm` can take it."""
    holder = Realm.objects.select_for_update().filter(query_type=query_type).exclude(pk=getattr(realm, "pk", None)).first()
    if holder is not None:
        holder.query_type = None
        holder.save(update_fields=["query_type"])
        publish_realm_change(holder.name, "saved", acting_user)
        logger.info("query type %s moved off realm %s", query_type, holder.name)


def save_realm(realm: Realm) -> None:
    try:
        realm.full_clean()
    except ValidationError as exc:
        raise Invalid.from_django(exc) from None
    realm.save()


def publish_realm_change(name: str, op: str, acting_user) -> None:
    event = {"type": "realm.changed", "op": op, "name": name, "by": describe_actor(acting_user)}
    send_event_on_commit(REALM_EVENTS, event, using="default")


def broadcast_message(message: str, *, realm: str = "", acting_user) -> None:
    """Send a `sysop_message` to every open socket, or only to those whose home is `realm`
    (the sysop's frame and the admin's broadcast page both come here)."""
    from realms.routing import find_realm

    group = find_realm(realm).group_name if realm else BROADCAST_GROUP
    send_event(group, frame_event({"type": "sysop_message", "message": message}))
    logger.info("broadcast to %s by %s: %s", realm or "everyone", describe_actor(acting_user), message[:200])

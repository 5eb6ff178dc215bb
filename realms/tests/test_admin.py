"""The realms admin saves and deletes through realms.actions: limits, ordered backups, and
the rule that a primary realm is never deleted."""
import pytest

from realms import actions
from realms.models import Realm, RealmBackup

pytestmark = pytest.mark.django_db


def change_form(realm: Realm, backups: list[tuple[str, Realm, int]], existing: list[RealmBackup] = ()) -> dict:
    form = {
        "query_type": realm.query_type or "", "min_workers": str(realm.min_workers),
        "max_workers": str(realm.max_workers), "queue_limit": str(realm.queue_limit),
        "backups-TOTAL_FORMS": str(len(existing) + len(backups)), "backups-INITIAL_FORMS": str(len(existing)),
        "backups-MIN_NUM_FORMS": "0", "backups-MAX_NUM_FORMS": "1000",
    }
    for index, row in enumerate(existing):
        form.update({
            f"backups-{index}-id": str(row.pk), f"backups-{index}-realm": str(realm.pk), f"backups-{index}-DELETE": "on",
            f"backups-{index}-query_type": row.query_type, f"backups-{index}-backup": str(row.backup_id),
            f"backups-{index}-position": str(row.position),
        })
    for index, (query_type, backup, position) in enumerate(backups, start=len(existing)):
        form.update({
            f"backups-{index}-realm": str(realm.pk), f"backups-{index}-query_type": query_type,
            f"backups-{index}-backup": str(backup.pk), f"backups-{index}-position": str(position),
        })
    return form


def backups_of(realm: Realm) -> list[tuple[str, str]]:
    return list(RealmBackup.objects.filter(realm=realm).order_by("query_type", "position").values_list("query_type", "backup__name"))


def test_admin_sets_a_realms_ordered_backups(admin_client, default_realms):
    imagine, chat, vision = default_realms["imagine"], default_realms["chat"], default_realms["vision"]

    response = admin_client.post(
        f"/admin/realms/realm/{imagine.pk}/change/", change_form(imagine, [("imagine", vision, 2), ("imagine", chat, 1)])
    )

    assert response.status_code == 302
    assert backups_of(imagine) == [("imagine", "$CHAT"), ("imagine", "$VISION")]


def test_admin_clears_the_backups_whose_rows_were_deleted(admin_client, default_realms):
    imagine, chat = default_realms["imagine"], default_realms["chat"]
    actions.update_realm(imagine, backups={"imagine": [chat]})

    response = admin_client.post(
        f"/admin/realms/realm/{imagine.pk}/change/", change_form(imagine, [], existing=list(RealmBackup.objects.all()))
    )

    assert response.status_code == 302
    assert backups_of(imagine) == []


def test_admin_keeps_a_realms_name_read_only(admin_client, default_realms):
    chat = default_realms["chat"]

    response = admin_client.post(f"/admin/realms/realm/{chat.pk}/change/", {**change_form(chat, []), "name": "$RENAMED"})

    assert response.status_code == 302
    assert Realm.objects.get(pk=chat.pk).name == "$CHAT"


def test_admin_deletes_a_backup_only_realm_but_not_a_primary_one(admin_client, default_realms):
    actions.create_realm(name="$CHAT_EU", query_type="chat")
    chat_eu = Realm.objects.get(name="$CHAT_EU")

    deleted = admin_client.post(f"/admin/realms/realm/{default_realms['chat'].pk}/delete/", {"post": "yes"})
    refused = admin_client.post(f"/admin/realms/realm/{chat_eu.pk}/delete/", {"post": "yes"})

    assert deleted.status_code == 302
    assert refused.status_code == 403
    assert sorted(Realm.objects.values_list("name", flat=True)) == ["$CHAT_EU", "$IMAGINE", "$SPEECH", "$VISION"]

"""Per-user rows on the shard the map names, shared tables on default, and the shard commands."""
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import override_settings

from accounts.actions.users import get_or_create_user, list_users, set_nickname
from accounts.billing import system_totals
from accounts.models import Charge, Query, SystemTotals, User
from rentahal.errors import DATABASE_OUTAGES, BrokerError
from rentahal.models import ShardMapEntry
from rentahal.routers import ShardRouter
from rentahal.sharded_models import Sharded, moved_models, sharded_models
from rentahal.sharding import ShardMoving, shard_aliases, shard_for_guid, writing_for
from tests.shard_helpers import guid_with_prefix, make_history, map_prefix, output_of, rows_on

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def test_suite_runs_on_three_shards():
    assert shard_aliases() == ["shard0", "shard1", "shard2"]


def test_unmapped_prefix_gets_a_deterministic_shard_and_it_is_recorded():
    guid = guid_with_prefix("04")

    alias = shard_for_guid(guid)

    assert alias == "shard1"  # 0x04 % 3
    assert ShardMapEntry.objects.get(prefix="04").shard == "shard1"


def test_user_query_charge_and_totals_are_written_to_the_users_shard_only():
    guid = guid_with_prefix("05")
    map_prefix("05", "shard0")

    query_ids = make_history(guid, queries=2)

    assert rows_on("05") == {"shard0": (1, 2, 2)}
    assert SystemTotals.objects.using("shard0").get().total_queries == 2
    assert not SystemTotals.objects.using("shard2").exists()
    assert Query.objects.get(pk=query_ids[0]).user_id == guid
    assert Charge.objects.filter(query_id=query_ids[1]).count() == 1


def test_shared_tables_live_on_default_and_per_user_tables_only_on_shards():
    default_tables = connections["default"].introspection.table_names()
    shard_tables = connections["shard1"].introspection.table_names()

    assert {"realms_realm", "pools_worker", "rentahal_shardmapentry", "accounts_foundinguser"} <= set(default_tables)
    assert not {"accounts_user", "accounts_query", "accounts_charge"} & set(default_tables)
    assert {"accounts_user", "accounts_query", "accounts_charge", "accounts_systemtotals"} <= set(shard_tables)
    assert not {"realms_realm", "pools_worker", "rentahal_shardmapentry"} & set(shard_tables)


def test_per_user_models_are_those_the_apps_declare_and_moves_carry_parents_first():
    assert {model._meta.label for model in sharded_models()} == {
        "accounts.User", "accounts.Query", "accounts.Charge", "accounts.SystemTotals", "federation.SentSettlement"
    }
    # Per-shard totals stay where they are; a query is copied after its user, a charge after its query.
    moved = [model._meta.label for model in moved_models()]
    assert sorted(moved) == ["accounts.Charge", "accounts.Query", "accounts.User", "federation.SentSettlement"]
    assert moved.index("accounts.User") < moved.index("accounts.Query") < moved.index("accounts.Charge")


def test_per_user_declaration_without_change_numbers_is_refused():
    with pytest.raises(ImproperlyConfigured, match="must name its change-number field"):
        Sharded(key="user", lookups=("user",))


def test_new_instance_is_saved_on_the_shard_of_its_guid_without_naming_it():
    guid = guid_with_prefix("07")

    User(guid=guid, nickname="routed").save()

    assert User.objects.using(shard_for_guid(guid)).filter(pk=guid).exists()
    assert User.objects.get(pk=guid).nickname == "routed"


def test_map_switch_made_by_another_process_is_seen_at_once(django_assert_num_queries):
    guid = guid_with_prefix("08")
    assert shard_for_guid(guid) == "shard2"
    with django_assert_num_queries(0):
        shard_for_guid(guid)

    map_prefix("08", "shard0")

    assert shard_for_guid(guid) == "shard0"


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_without_shards_everything_per_user_lives_on_default():
    router = ShardRouter()
    with override_settings(DATABASES={"default": connections["default"].settings_dict}):
        assert shard_aliases() == ["default"]
        assert shard_for_guid(str(uuid.uuid4())) == "default"
        assert router.db_for_write(User, instance=User(guid=str(uuid.uuid4()))) == "default"
        assert router.allow_migrate("default", "accounts", "query") is True


def test_nickname_taken_on_another_shard_is_refused():
    first, second = guid_with_prefix("00"), guid_with_prefix("01")
    set_nickname(get_or_create_user(first), "zed")
    other = get_or_create_user(second)
    assert shard_for_guid(first) != shard_for_guid(second)

    with pytest.raises(BrokerError, match="Nickname already taken"):
        set_nickname(other, "zed")

    assert User.objects.get(pk=second).nickname != "zed"


def test_sysop_list_and_system_totals_gather_every_shard():
    guids = [guid_with_prefix(prefix) for prefix in ("00", "01", "02")]
    for guid in guids:
        make_history(guid, queries=1)

    listed = {user.guid for user in list_users()}

    assert listed == set(guids)
    assert {shard_for_guid(guid) for guid in guids} == {"shard0", "shard1", "shard2"}
    totals = system_totals()
    assert totals["total_queries"] == 3
    assert totals["total_cost"] == sum(charge.amount for alias in shard_aliases() for charge in Charge.objects.using(alias))


def test_shards_command_lists_counts_per_shard():
    make_history(guid_with_prefix("00"), queries=2)
    make_history(guid_with_prefix("01"), queries=1)

    output = output_of("shards")

    assert "shard0: 1 users, 0 sent settlements, 2 queries, 2 charges" in output
    assert "shard1: 1 users, 0 sent settlements, 1 queries, 1 charges" in output
    assert "shard2: 0 users, 0 sent settlements, 0 queries, 0 charges" in output
    assert "total: 2 users, 0 sent settlements, 3 queries, 3 charges" in output


def test_verify_passes_when_every_row_is_where_the_map_says():
    make_history(guid_with_prefix("00"), queries=1)

    assert "ok: every row is on the shard the map names" in output_of("verify_shards")


def test_verify_reports_orphans_and_duplicates_and_fails():
    guid = guid_with_prefix("00")
    make_history(guid, queries=1)
    User.objects.using("shard2").create(guid=guid, nickname="copy")

    with pytest.raises(CommandError, match="2 problems, 0 interrupted moves") as raised:
        output_of("verify_shards")

    assert "prefix 00: 1 users, 0 sent settlements, 0 queries, 0 charges on shard2, but the map names shard0 (orphans)" in raised.value.output
    assert f"user {guid}: duplicated on shard0, shard2" in raised.value.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["00", "shard9"], "Unknown shard 'shard9'. Configured shards: shard0, shard1, shard2."),
        (["zz", "shard1"], "'zz' is not a guid prefix"),
        (["0", "shard1"], "'0' is not a guid prefix"),
        (["00", "shard0"], "Prefix 00 is already on shard0."),
        (["00"], "Name the shard to move to"),
        (["00", "--resume"], "No interrupted move of prefix 00."),
    ],
    ids=["unknown-shard", "not-hex", "too-short", "same-shard", "no-shard", "nothing-to-resume"],
)
def test_bad_move_is_refused_with_a_clear_error_and_the_map_unchanged(arguments, message):
    make_history(guid_with_prefix("00"), queries=1)

    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(".", r"\.")):
        call_command("move_shard_prefix", *arguments)

    assert ShardMapEntry.objects.get(prefix="00").shard == "shard0"
    assert rows_on("00") == {"shard0": (1, 1, 1)}


def test_move_to_a_shard_that_is_down_is_refused_and_the_map_unchanged():
    make_history(guid_with_prefix("00"), queries=1)
    shard = connections["shard2"]
    port = shard.settings_dict["PORT"]
    shard.close()
    shard.settings_dict["PORT"] = "1"
    try:
        with pytest.raises(CommandError, match="Shard shard2 is unreachable"):
            call_command("move_shard_prefix", "00", "shard2")
    finally:
        shard.settings_dict["PORT"] = port
        shard.close()

    assert ShardMapEntry.objects.get(prefix="00").shard == "shard0"
    assert rows_on("00") == {"shard0": (1, 1, 1)}


def test_a_connection_dropped_at_the_write_fence_is_a_store_outage_not_a_move():
    """A Postgres restart is tried again by writers (`DATABASE_OUTAGES`); `ShardMoving` is only
    for a fence a mover holds past the writer's wait."""
    guid = guid_with_prefix("06")
    default = connections["default"]
    default.ensure_connection()
    with connections["shard0"].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [default.connection.info.backend_pid])

    with pytest.raises(DATABASE_OUTAGES) as refused:
        with writing_for(guid):
            pass

    assert not isinstance(refused.value, ShardMoving)
    default.close()

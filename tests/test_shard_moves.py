"""Moving a guid prefix between shards: live, under load, interrupted, and rebalanced."""
import asyncio
import subprocess
import sys
import threading
import time

import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections, transaction

from accounts.actions.queries import previous_queries
from accounts.actions.users import find_user, set_nickname
from accounts.billing import system_totals
from accounts.models import Charge, Query, User
from rentahal.models import ShardMapEntry, ShardMove
from conftest import PROJECT_DIR, worker_environment
from rentahal import sharding
from rentahal.shard_moves import MoveError, begin_move, check_prefix, commit_switch, copy_rows, switch_map
from rentahal.shard_placement import plan_moves, shard_loads
from rentahal.sharding import FENCE_LOCK_CLASS, close_fence, shard_aliases, shard_for_guid
from tests.shard_helpers import guid_with_prefix, make_history, map_prefix, output_of, rows_on

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def ledger() -> dict[str, object]:
    """Every charge in the system by query id, gathered from every shard."""
    return {str(charge.query_id): charge.amount for alias in shard_aliases() for charge in Charge.objects.using(alias)}


def test_move_puts_every_row_on_the_target_and_none_on_the_source():
    guids = [guid_with_prefix("00") for _ in range(3)]
    for guid in guids:
        make_history(guid, queries=2, failed=1)
    before = ledger()

    output = output_of("move_shard_prefix", "00", "shard2")

    assert "move 00: shard0 → shard2, copying" in output
    assert "switched to shard2" in output
    assert rows_on("00") == {"shard2": (3, 9, 6)}
    assert ShardMapEntry.objects.get(prefix="00").shard == "shard2"
    assert {shard_for_guid(guid) for guid in guids} == {"shard2"}
    assert ledger() == before
    assert system_totals()["total_queries"] == 6
    assert ShardMove.objects.get(prefix="00").state == ShardMove.State.CLEANED
    assert "ok" in output_of("verify_shards")


def test_moved_user_keeps_their_history_and_totals():
    guid = guid_with_prefix("00")
    make_history(guid, queries=2)
    user_before = User.objects.get(pk=guid)
    history_before = previous_queries(user_before)

    call_command("move_shard_prefix", "00", "shard1")

    user_after = find_user(guid)
    assert user_after.as_frame_data() == user_before.as_frame_data()
    assert previous_queries(user_after) == history_before


def chat(prompt: str) -> dict:
    return {"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat", "model_type": "worker_node", "model_name": ""}}


async def test_move_under_concurrent_queries_loses_and_doubles_nothing(rq_worker, fake_server, register_worker, connect):
    """Users of the moving prefix and of others keep asking while the move runs; every
    query ends answered and charged once, and the ledger adds up on the new shard."""
    await database_sync_to_async(register_worker)(fake_server, "openai")
    fake_server.configure(delay=0.02)
    moving = [guid_with_prefix("00") for _ in range(6)]
    staying = [guid_with_prefix(prefix) for prefix in ("01", "02", "03") for _ in range(2)]
    clients = {guid: await connect(guid) for guid in moving + staying}

    async def ask(guid: str, prompt: str) -> dict:
        client = clients[guid]
        await client.send(chat(prompt))
        return (await client.receive_until("query_result", timeout=30))[-1]

    warm = await asyncio.gather(*(ask(guid, "before") for guid in clients))
    before = await database_sync_to_async(ledger)()
    assert set(before) == {result["query_id"] for result in warm}

    done = threading.Event()

    def move():
        try:
            call_command("move_shard_prefix", "00", "shard2")
        finally:
            connections.close_all()
            done.set()

    async def keep_asking(guid: str) -> list[dict]:
        results = [await ask(guid, "during")]
        while not done.is_set():
            results.append(await ask(guid, "during"))
        results.append(await ask(guid, "after"))
        return results

    mover = asyncio.get_running_loop().run_in_executor(None, move)
    during = await asyncio.gather(*(keep_asking(guid) for guid in clients))
    await mover

    answered = {result["query_id"]: result for results in during for result in results}
    after = await database_sync_to_async(ledger)()
    assert {key: after[key] for key in before} == before
    assert set(after) == set(before) | set(answered)
    assert all(float(after[query_id]) == pytest.approx(result["cost"]) for query_id, result in answered.items())
    totals = await database_sync_to_async(system_totals)()
    assert totals["total_queries"] == len(after)
    assert totals["total_cost"] == sum(after.values())
    placement = await database_sync_to_async(rows_on)("00")
    assert list(placement) == ["shard2"]
    assert placement["shard2"][0] == len(moving)
    for guid in moving:
        user = await database_sync_to_async(find_user)(guid)
        charges = await database_sync_to_async(list)(Charge.objects.filter(user_id=guid))
        assert user.query_count == len(charges)
        assert user.total_cost == sum(charge.amount for charge in charges)
    assert "ok" in await database_sync_to_async(output_of)("verify_shards")
    # A connection opened on asgiref's sync thread outlives the test otherwise and
    # blocks dropping the test database.
    await database_sync_to_async(connections.close_all)()


def test_move_killed_while_copying_is_reported_then_resumed():
    guids = [guid_with_prefix("00") for _ in range(2)]
    for guid in guids:
        make_history(guid, queries=2)
    before = ledger()
    move = begin_move("00", "shard1")
    copy_rows(move)  # the mover dies here, before the switch
    make_history(guids[0], queries=1)  # and a query lands on the source meanwhile

    with pytest.raises(CommandError, match="0 problems, 1 interrupted moves") as raised:
        output_of("verify_shards")
    assert "prefix 00: move shard0 → shard1 stopped while copying; the map names shard0" in raised.value.output

    call_command("move_shard_prefix", "00", "--resume")

    assert rows_on("00") == {"shard1": (2, 5, 5)}
    assert len(ledger()) == len(before) + 1
    assert "ok" in output_of("verify_shards")


def test_move_killed_after_the_switch_is_resumed_by_removing_the_old_rows():
    guid = guid_with_prefix("00")
    make_history(guid, queries=2)
    move = begin_move("00", "shard1")
    copy_rows(move)
    switch_map(move)  # the mover dies here, before deleting the old rows
    make_history(guid, queries=1)  # writes now go to the new shard

    with pytest.raises(CommandError, match="1 interrupted moves") as raised:
        output_of("verify_shards")
    assert "stopped while switched; the map names shard1, old rows still on shard0" in raised.value.output
    assert rows_on("00") == {"shard0": (1, 2, 2), "shard1": (1, 3, 3)}

    call_command("move_shard_prefix", "00", "shard1", "--resume")

    assert rows_on("00") == {"shard1": (1, 3, 3)}
    assert "ok" in output_of("verify_shards")


def kill_mover_between_switch_and_publish(guid: str) -> None:
    """Switch prefix 00 to shard1 and die before publishing the new map token, while this
    process reads through the map it cached before the move."""
    make_history(guid, queries=2)
    assert shard_for_guid(guid) == "shard0"
    move = begin_move("00", "shard1")
    copy_rows(move)
    commit_switch(move)


def test_move_killed_before_publishing_its_switch_is_read_right_after_resume():
    guid = guid_with_prefix("00")
    kill_mover_between_switch_and_publish(guid)
    assert shard_for_guid(guid) == "shard0"  # the map says shard1; this process reads shard0

    resumed = subprocess.run(
        [sys.executable, "manage.py", "move_shard_prefix", "00", "--resume"],
        cwd=PROJECT_DIR, env=worker_environment(), capture_output=True, text=True, timeout=120,
    )

    assert resumed.returncode == 0, resumed.stderr
    assert rows_on("00") == {"shard1": (1, 2, 2)}
    assert shard_for_guid(guid) == "shard1"
    assert len(previous_queries(find_user(guid))) == 2


def test_unpublished_switch_reaches_readers_within_the_token_lifetime_without_resume(monkeypatch):
    monkeypatch.setattr(sharding, "TOKEN_TTL_SECONDS", 1)
    guid = guid_with_prefix("00")
    kill_mover_between_switch_and_publish(guid)

    deadline = time.monotonic() + 10
    while shard_for_guid(guid) != "shard1" and time.monotonic() < deadline:
        time.sleep(0.1)

    assert shard_for_guid(guid) == "shard1"


def fill_prefix_00_on_shard0(users: int) -> None:
    """Give prefix 00 on shard0 `users` users with two answered, charged queries each, in
    three statements (the actions would take minutes for thousands of rows)."""
    with connections["shard0"].cursor() as cursor:
        cursor.execute(
            "INSERT INTO accounts_user (guid, nickname, is_sysop, is_banned, total_query_time, total_cost, query_count, created_at)"
            " SELECT overlay(gen_random_uuid()::text PLACING '00' FROM 1 FOR 2), 'bulk ' || n, false, false, 1.0, 0.021, 2, now()"
            " FROM generate_series(1, %s) AS n",
            [users],
        )
        cursor.execute(
            "INSERT INTO accounts_query (id, user_id, query_type, model_type, model_name, realm, prompt, image, status, result,"
            " result_type, error, worker, attempts, accepted_at, started_at, finished_at, processing_time, cost, idempotency_key,"
            " conversation_id, audio, audio_format, speech_task, options, usage)"
            " SELECT overlay(gen_random_uuid()::text PLACING '00' FROM 1 FOR 2)::uuid, guid, 'chat', 'worker_node', '',"
            " '$CHAT', 'question', '', 'done', 'answer', 'text', '', 'fake', 1, now(), now(), now(), 0.5, 0.0105, '',"
            " '', '', '', '', '{}', '{}'"
            " FROM accounts_user, generate_series(1, 2) WHERE guid LIKE '00%%'"
        )
        cursor.execute(
            "INSERT INTO accounts_charge (query_id, user_id, amount, processing_time, created_at)"
            " SELECT id, user_id, cost, processing_time, finished_at FROM accounts_query WHERE user_id LIKE '00%%'"
        )


def prefix_00_on(alias: str) -> dict[str, list[dict]]:
    """Every row of prefix 00 on one shard as users see it: without per-database ids and change numbers."""
    def rows(queryset, *hidden):
        return [{name: value for name, value in row.items() if name not in hidden} for row in queryset.values()]

    return {
        "users": rows(User.objects.using(alias).filter(guid__startswith="00").order_by("guid"), "change_number"),
        "queries": rows(Query.objects.using(alias).filter(user__guid__startswith="00").order_by("id"), "change_number"),
        "charges": rows(Charge.objects.using(alias).filter(user__guid__startswith="00").order_by("query_id"), "id", "change_number"),
    }


def rows_read_on(alias: str) -> int:
    """Return how many rows of its tables this shard has handed out so far (its statistics)."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")  # this session's counts, once it goes idle
        cursor.execute("SELECT sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)) FROM pg_stat_user_tables")
        return cursor.fetchone()[0]


def test_switch_copies_only_the_rows_written_since_the_bulk_copy():
    map_prefix("00", "shard0")
    fill_prefix_00_on_shard0(users=1500)
    move = begin_move("00", "shard1")
    copy_rows(move)
    askers = list(User.objects.using("shard0").filter(guid__startswith="00").values_list("guid", flat=True)[:4])
    for guid in askers[:3]:
        make_history(guid, queries=1)
    set_nickname(find_user(askers[3]), "renamed during the move")

    read_before = rows_read_on("shard0")

    copied = switch_map(move)

    assert copied == {"users": 4, "sent settlements": 0, "queries": 3, "charges": 3}
    assert rows_read_on("shard0") - read_before == 10  # the fence never waits on a scan of the prefix
    assert prefix_00_on("shard1") == prefix_00_on("shard0")
    assert find_user(askers[3]).nickname == "renamed during the move"
    call_command("move_shard_prefix", "00", "--resume")
    assert rows_on("00") == {"shard1": (1500, 3003, 3003)}
    assert "ok" in output_of("verify_shards")


@pytest.mark.parametrize("killed_after", ["copy", "switch"])
def test_interrupted_move_rolled_back_leaves_every_row_on_the_source(killed_after):
    guid = guid_with_prefix("00")
    make_history(guid, queries=2)
    move = begin_move("00", "shard1")
    copy_rows(move)
    if killed_after == "switch":
        switch_map(move)
    make_history(guid, queries=1)

    call_command("move_shard_prefix", "00", "--rollback")

    assert rows_on("00") == {"shard0": (1, 3, 3)}
    assert ShardMapEntry.objects.get(prefix="00").shard == "shard0"
    assert ShardMove.objects.get(prefix="00").state == ShardMove.State.ROLLED_BACK
    assert find_user(guid).query_count == 3
    assert "ok" in output_of("verify_shards")


def test_second_move_of_a_prefix_with_an_interrupted_one_is_refused():
    make_history(guid_with_prefix("00"), queries=1)
    copy_rows(begin_move("00", "shard1"))

    with pytest.raises(CommandError, match="stopped while copying; finish it with --resume or undo it with --rollback"):
        call_command("move_shard_prefix", "00", "shard2")


def skew_onto_shard0() -> None:
    """Six prefixes, all mapped to shard0, of different weights; shard1 and shard2 nearly empty."""
    for prefix, users in (("10", 4), ("11", 3), ("12", 3), ("13", 2), ("14", 1), ("15", 1)):
        map_prefix(prefix, "shard0")
        for _ in range(users):
            make_history(guid_with_prefix(prefix), queries=1)
    make_history(guid_with_prefix("01"), queries=1)


def test_rebalance_dry_run_plans_moves_off_the_heavy_shard_and_moves_nothing():
    skew_onto_shard0()
    loads_before, _ = shard_loads()

    output = output_of("rebalance_shards")

    planned = [line for line in output.splitlines() if " move " in line]
    assert planned
    assert " shard0 → " in planned[0]
    assert "dry run: nothing moved" in output
    assert shard_loads()[0] == loads_before


def test_rebalance_apply_narrows_the_gap_and_loses_nothing():
    skew_onto_shard0()
    loads_before, _ = shard_loads()
    before = ledger()

    output = output_of("rebalance_shards", "--apply")

    loads_after, _ = shard_loads()
    assert "rebalanced" in output
    assert max(loads_after.values()) - min(loads_after.values()) < max(loads_before.values()) - min(loads_before.values())
    assert sum(loads_after.values()) == sum(loads_before.values())
    assert ledger() == before
    assert "ok" in output_of("verify_shards")
    assert "balanced: no move would narrow the gap" in output_of("rebalance_shards")


def weights(first: int, count: int, *, start: int = 0) -> dict[str, int]:
    """`count` prefixes from hex `start` on, weighing first, first + 1, ... rows."""
    return {f"{start + number:02x}": first + number for number in range(count)}


def after(plan, placement: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Return the rows per prefix per shard once the planned moves are made."""
    placed = {alias: dict(by_prefix) for alias, by_prefix in placement.items()}
    for move in plan:
        placed[move.target][move.prefix] = placed[move.source].pop(move.prefix)
    return placed


SKEWED = {
    "all on one shard": {"shard0": weights(3, 24), "shard1": {}, "shard2": {}},
    "heaviest shard holds one big prefix": {"shard0": {"a0": 31}, "shard1": weights(5, 6), "shard2": {}},
    "two heavy, one light": {"shard0": weights(2, 15), "shard1": weights(4, 10, start=0x20), "shard2": {"f0": 1}},
}


@pytest.mark.parametrize("placement", SKEWED.values(), ids=SKEWED.keys())
def test_rebalance_plan_brings_every_shard_within_one_prefix_of_the_mean(placement):
    plan = plan_moves(placement)

    placed = after(plan, placement)
    loads = {alias: sum(by_prefix.values()) for alias, by_prefix in placed.items()}
    mean = sum(loads.values()) / len(loads)
    heaviest = max(loads, key=loads.get)
    lightest_prefix_of_heaviest = min(placed[heaviest].values())
    assert all(abs(load - mean) <= lightest_prefix_of_heaviest for load in loads.values()), loads
    # No single further move would level any two shards: no prefix is lighter than its shard's lead.
    assert all(
        weight >= loads[alias] - loads[other]
        for alias, by_prefix in placed.items() for weight in by_prefix.values() for other in loads
    ), placed
    assert len({move.prefix for move in plan}) == len(plan)


def test_balanced_shards_get_no_moves():
    balanced = {"shard0": {"00": 10, "03": 10}, "shard1": {"01": 20}, "shard2": {"02": 7, "05": 7, "08": 5}}

    assert plan_moves(balanced) == []


def test_rebalance_moves_between_lighter_shards_when_the_heaviest_cannot_give():
    for prefix, users, alias in (("10", 6, "shard0"), ("11", 2, "shard1"), ("12", 2, "shard1"), ("13", 1, "shard1")):
        map_prefix(prefix, alias)
        for _ in range(users):
            make_history(guid_with_prefix(prefix), queries=1)
    before = ledger()

    output = output_of("rebalance_shards", "--apply")

    assert "move 11 shard1 → shard2 (6 rows)" in output
    assert shard_loads()[0] == {"shard0": 18, "shard1": 9, "shard2": 6}
    assert ledger() == before
    assert "ok" in output_of("verify_shards")


def wait_for_writer_at_fence(prefix: str) -> None:
    """Return once another session is queued on the prefix's fence (read from pg_locks)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = %s AND objid = %s",
                [FENCE_LOCK_CLASS, int(prefix, 16)],
            )
            if cursor.fetchone()[0]:
                return
        time.sleep(0.01)
    pytest.fail("the writer never reached the fence")


def test_write_that_meets_the_closed_fence_waits_then_lands_on_the_new_shard():
    guid = guid_with_prefix("00")
    make_history(guid, queries=1)
    move = begin_move("00", "shard1")
    copy_rows(move)
    written = {}

    def write():
        try:
            written["ids"] = make_history(guid, queries=1)
        finally:
            connections.close_all()

    writer = threading.Thread(target=write)
    with transaction.atomic(using="default"):
        close_fence("00", timeout_ms=5000)
        writer.start()
        wait_for_writer_at_fence("00")
        switch_map(move)
    writer.join()

    assert Query.objects.using("shard1").filter(pk=written["ids"][0]).exists()
    assert not Query.objects.using("shard0").filter(pk=written["ids"][0]).exists()
    call_command("move_shard_prefix", "00", "--resume")
    assert rows_on("00") == {"shard1": (1, 2, 2)}


def test_a_refused_move_carries_a_code_like_every_refusal():
    with pytest.raises(MoveError) as refusal:
        check_prefix("zz")

    assert (refusal.value.code, refusal.value.http_status) == ("move_refused", 409)
    assert refusal.value.message == "'zz' is not a guid prefix: give two hex characters, such as 3f."

"""Agents use the pool tools through the `mcp` SDK's own client: over streamable HTTP at
/mcp of a running broker (daphne) and over stdio (`manage.py mcp_stdio`)."""
import subprocess
import sys
import time
import urllib.error
import urllib.request

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from rest_framework.authtoken.models import Token

from conftest import OPERATOR_PERMISSIONS, PROJECT_DIR, make_staff, worker_environment
from pools import actions as pools
from pools.models import PoolAlias
from pools.testing.speech_servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker_url(transactional_db, default_realms):
    """daphne serving rentahal.asgi on a free port, as `run_broker` runs it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "rentahal.asgi:application"],
        cwd=PROJECT_DIR, env={**worker_environment(), "MODEL_READ_TIMEOUT": "30"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/mcp", timeout=1)
        except urllib.error.HTTPError:
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("daphne did not come up")
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def operator_token(db):
    return Token.objects.create(user=make_staff("agent-operator", *OPERATOR_PERMISSIONS)).key


@pytest.fixture
def reader_token(db):
    return Token.objects.create(user=make_staff("agent-reader", "pools.view_poolalias")).key


def over_http(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    return Client(streamable_http_client(f"{url}/mcp", http_client=http))


def over_stdio(token: str) -> Client:
    return Client(StdioServerParameters(
        command=sys.executable, args=["manage.py", "mcp_stdio"], cwd=str(PROJECT_DIR),
        env={**worker_environment(), "RENTAHAL_TOKEN": token},
    ))


@pytest.fixture
def two_chat_pools(fake_servers, start_worker):
    """$ALPHA and $BETA, each a fake OpenAI server, and a realm worker to run their queries."""
    for name in ("alpha", "beta"):
        pools.add_worker(name=name, address=fake_servers().url, query_type="chat", wire_format="openai", model="fake-model")
    start_worker("--concurrency", "8")


async def call(client: Client, tool: str, **arguments) -> dict:
    result = await client.call_tool(tool, arguments)
    return result.structured_content


async def test_an_agent_spawns_routes_with_each_selector_searches_and_closes_over_http(broker_url, operator_token, two_chat_pools):
    async with over_http(broker_url, operator_token) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        for pool, member in (("$ALPHA", "alpha"), ("$BETA", "beta")):
            spawned = await call(client, "pool_spawn", name=pool, query_type="chat", members=[member], strategy="round_robin")
            assert spawned["ok"] and spawned["pool"]["members"][0]["name"] == member

        routed = {}
        for selector in ("round_robin", "least_loaded", "random", "affinity"):
            answer = await call(client, "pool_route_execute", prompt=f"route by {selector}", selector=selector, affinity_key="talk-1")
            assert answer["ok"], answer
            assert answer["result"] == f"echo: route by {selector}"
            assert answer["routing"]["chosen"] in ("$ALPHA", "$BETA") and answer["routing"]["reason"]
            assert {entry["pool"] for entry in answer["routing"]["candidates"]} == {"$ALPHA", "$BETA"}
            routed[selector] = answer["routing"]["chosen"]
        again = await call(client, "pool_route_execute", prompt="same talk", selector="affinity", affinity_key="talk-1")
        turns = [(await call(client, "pool_route_execute", prompt="turn", selector="round_robin"))["routing"]["chosen"] for _ in range(2)]
        named = await call(client, "pool_execute", pool="$BETA", prompt="just beta")
        found = await call(client, "pool_search_memory", query="beta")
        closed = await call(client, "pool_close", name="$ALPHA")

    assert names == {
        "pool_list", "pool_health", "pool_spawn", "pool_scale", "pool_close", "pool_execute", "pool_route_execute", "pool_search_memory",
    }
    assert again["routing"]["chosen"] == routed["affinity"]
    assert set(turns) == {"$ALPHA", "$BETA"}
    assert (named["worker"], named["routing"]["selector"]) == ("beta", "named")
    assert [result["prompt"] for result in found["results"]] == ["just beta"]
    assert closed == {"ok": True, "closed": {"name": "$ALPHA", "realm": ""}}
    assert [pool.name async for pool in PoolAlias.objects.all()] == ["$BETA"]


async def test_refusals_come_back_as_data_and_write_nothing(broker_url, operator_token, reader_token, transactional_db):
    await pools_add_worker(name="painter", query_type="imagine")
    async with over_http(broker_url, operator_token) as client:
        bad_alias = await call(client, "pool_spawn", name="chat pool", query_type="chat", members=["painter"])
        wrong_type = await call(client, "pool_spawn", name="$CHAT", query_type="chat", members=["painter"])
        unknown_argument = await call(client, "pool_list", colour="blue")
        no_pool = await call(client, "pool_route_execute", prompt="hello", selector="least_loaded")
        empty_search = await call(client, "pool_search_memory", query="")
    async with over_http(broker_url, reader_token) as client:
        not_allowed = await call(client, "pool_spawn", name="$ART", query_type="imagine", members=["painter"])

    assert (bad_alias["ok"], bad_alias["error"]["code"]) == (False, "invalid") and "name" in bad_alias["error"]["fields"]
    assert "members" in wrong_type["error"]["fields"]
    assert unknown_argument["error"]["fields"] == {"colour": ["Not an argument of this tool."]}
    assert (no_pool["error"]["code"], no_pool["routing"]["chosen"]) == ("no_pool", None) and no_pool["error"]["retry_after"] > 0
    assert empty_search["error"]["code"] == "bad_search"
    assert not_allowed["error"]["code"] == "forbidden"
    assert await PoolAlias.objects.acount() == 0


async def pools_add_worker(**fields):
    from asgiref.sync import sync_to_async

    await sync_to_async(pools.add_worker)(address="127.0.0.1:9", wire_format="a1111", **fields)


def test_mcp_over_http_refuses_a_request_without_a_staff_token(broker_url, reader_token):
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        request = urllib.request.Request(f"{broker_url}/mcp", data=b"{}", headers={"Content-Type": "application/json", **headers})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        assert b"not_authenticated" in refused.value.read()


async def test_an_agent_lists_spawns_and_scales_pools_over_stdio(operator_token, transactional_db):
    for name in ("alpha", "beta"):
        await pools_add_worker(name=name, query_type="imagine")
    async with over_stdio(operator_token) as client:
        spawned = await call(client, "pool_spawn", name="$ART", query_type="imagine", members=["alpha"])
        scaled = await call(client, "pool_scale", name="$ART", add=["beta"], remove=["alpha"])
        listed = await call(client, "pool_list")
        health = await call(client, "pool_health", pool="$ART")

    assert spawned["ok"] and scaled["ok"]
    assert [member["name"] for member in scaled["pool"]["members"]] == ["beta"]
    assert [pool["name"] for pool in listed["pools"]] == ["$ART"]
    assert health["pools"][0]["serving_members"] == 1


def test_mcp_stdio_refuses_to_start_without_a_staff_token(transactional_db):
    finished = subprocess.run(
        [sys.executable, "manage.py", "mcp_stdio"], cwd=PROJECT_DIR, env={**worker_environment(), "RENTAHAL_TOKEN": "nope"},
        capture_output=True, text=True, timeout=60,
    )

    assert finished.returncode == 1
    assert "RENTAHAL_TOKEN" in finished.stderr

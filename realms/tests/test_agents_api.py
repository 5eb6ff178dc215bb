"""The pool tools over DRF (/api/agents/): staff with a token or session; refusals in the
project's error shape with their HTTP status."""
import uuid

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from accounts.models import Query, User
from conftest import OPERATOR_PERMISSIONS, make_staff
from pools import actions as pools
from rentahal.sharding import new_query_id, shard_for_guid


def bearer(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def operator_api(db):
    return bearer(make_staff("api-operator", *OPERATOR_PERMISSIONS))


def asked_on(prefix: str, prompt: str) -> str:
    guid = prefix + str(uuid.uuid4())[2:]
    alias = shard_for_guid(guid)
    User.objects.using(alias).create(guid=guid, nickname=f"user_{guid[:8]}")
    Query.objects.using(alias).create(
        id=new_query_id(guid), user_id=guid, query_type="chat", realm="$CHAT", prompt=prompt, result="ok", result_type="text", status="done"
    )
    return guid


def test_staff_search_finds_queries_of_users_on_every_shard(operator_api):
    guids = [asked_on(prefix, f"a question about otters from {prefix}") for prefix in ("00", "01", "02")]

    response = operator_api.get("/api/agents/search/", {"q": "otters", "per_page": 2})

    assert response.status_code == 200
    assert (response.data["total"], len(response.data["results"])) == (3, 2)
    one = operator_api.get("/api/agents/search/", {"q": "otters", "user": guids[1]})
    assert [result["user"] for result in one.data["results"]] == [guids[1]]


def test_an_empty_search_is_refused_with_the_field_at_fault(operator_api):
    response = operator_api.get("/api/agents/search/", {"q": ""})

    assert response.status_code == 400
    assert response.data["error"]["code"] == "bad_search" and "query" in response.data["error"]["fields"]


def test_scaling_adds_and_removes_members_and_reports_the_pool(operator_api):
    for name in ("alpha", "beta"):
        pools.add_worker(name=name, address="127.0.0.1:9", query_type="chat")
    pools.create_pool("$CHAT", query_type="chat", members=["alpha"])

    response = operator_api.post("/api/agents/pools/scale/", {"name": "$CHAT", "add": ["beta"], "remove": ["alpha"]}, format="json")

    assert response.status_code == 200
    assert [member["name"] for member in response.data["pool"]["members"]] == ["beta"]


def test_scaling_needs_the_pools_permissions(db):
    reader = bearer(make_staff("api-reader", "pools.view_poolalias"))
    pools.add_worker(name="alpha", address="127.0.0.1:9", query_type="chat")
    pools.create_pool("$CHAT", query_type="chat", members=["alpha"])

    response = reader.post("/api/agents/pools/scale/", {"name": "$CHAT", "remove": ["alpha"]}, format="json")

    assert (response.status_code, response.data["error"]["code"]) == (403, "forbidden")


def test_health_reports_each_pools_load(operator_api):
    pools.add_worker(name="alpha", address="127.0.0.1:9", query_type="chat", max_concurrency=4)
    pools.create_pool("$CHAT", query_type="chat", members=["alpha"])

    response = operator_api.get("/api/agents/pools/health/")

    [pool] = response.data["pools"]
    assert (pool["pool"], pool["in_flight"], pool["capacity"], pool["load"]) == ("$CHAT", 0, 4, 0.0)


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Token "])
def test_the_agents_api_refuses_callers_without_a_staff_token(db, header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/api/agents/search/", {"q": "otters"})

    assert response.status_code in (401, 403)
    assert response.data["error"]["code"] in ("not_authenticated", "authentication_failed")

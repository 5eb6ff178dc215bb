"""Search over past queries: Postgres full-text search on every shard, ranked and paged; a
user finds their own queries, a sysop anyone's, and nobody else's are ever shown."""
import uuid

import pytest
from asgiref.sync import sync_to_async as sync

from accounts.actions.search import search_queries
from accounts.models import Query, User
from rentahal.errors import Invalid
from rentahal.sharding import new_query_id, shard_for_guid

pytestmark = pytest.mark.django_db(transaction=True)


def user_on(prefix: str, nickname: str, **fields) -> User:
    """Return a user whose guid starts with `prefix`, so tests choose the shard (prefix number mod shards)."""
    guid = prefix + str(uuid.uuid4())[2:]
    return User.objects.using(shard_for_guid(guid)).create(guid=guid, nickname=nickname, **fields)


def asked(user: User, prompt: str, result: str = "an answer", result_type: str = "text") -> Query:
    return Query.objects.using(shard_for_guid(user.guid)).create(
        id=new_query_id(user.guid), user_id=user.guid, query_type="chat", realm="$CHAT", prompt=prompt, result=result,
        result_type=result_type, status="done",
    )


@pytest.fixture
def carol():
    return user_on("00", "carol")


@pytest.fixture
def dave():
    return user_on("01", "dave")


def test_users_on_different_shards_are_searched_together_best_match_first(carol, dave):
    assert shard_for_guid(carol.guid) != shard_for_guid(dave.guid)
    asked(carol, "what grows in volcanic soil", "grapes and coffee")
    asked(dave, "volcanic eruptions explained", "magma rises; volcanic ash falls; volcanic rock forms")
    asked(dave, "recipe for bread")

    found = search_queries("volcanic", user=None)

    assert found["total"] == 2
    assert [result["prompt"] for result in found["results"]] == ["volcanic eruptions explained", "what grows in volcanic soil"]
    assert found["results"][0]["rank"] > found["results"][1]["rank"]


def test_a_users_search_never_shows_another_users_queries(carol, dave):
    asked(carol, "my secret tomato plan")
    asked(dave, "his own tomato plan")

    found = search_queries("tomato", user=dave.guid)

    assert [result["user"] for result in found["results"]] == [dave.guid]


def test_results_are_paged_across_shards(carol, dave):
    for number in range(5):
        asked(carol if number % 2 else dave, f"question {number} about llamas")

    pages = [search_queries("llamas", user=None, page=page, per_page=2) for page in (1, 2, 3)]

    assert [len(page["results"]) for page in pages] == [2, 2, 1]
    assert len({result["query_id"] for page in pages for result in page["results"]}) == 5
    assert {page["total"] for page in pages} == {5}


def test_answers_in_audio_or_image_are_not_searched_as_words(carol):
    asked(carol, "say hello", "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA=", result_type="audio")

    assert search_queries("UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA", user=None)["total"] == 0
    assert search_queries("hello", user=None)["results"][0]["result"] == "[audio]"


@pytest.mark.parametrize(
    "text, page, per_page, field",
    [("", 1, 20, "query"), ("   ", 1, 20, "query"), ("x" * 201, 1, 20, "query"), (None, 1, 20, "query"),
     ("ok", 0, 20, "page"), ("ok", 1, 51, "per_page"), ("ok", "two", 20, "page"), ("ok", 60, 20, "page")],
    ids=["empty", "blank", "huge", "missing", "page 0", "big page", "page not a number", "too deep"],
)
def test_a_bad_search_is_refused_naming_the_field(text, page, per_page, field):
    with pytest.raises(Invalid) as refused:
        search_queries(text, user=None, page=page, per_page=per_page)

    assert refused.value.code == "bad_search"
    assert field in refused.value.fields


async def test_over_the_socket_a_user_searches_only_their_own_queries(carol, dave, connect):
    await sync(asked)(carol, "carol asks about comets")
    await sync(asked)(dave, "dave asks about comets")
    client = await connect(carol.guid)

    await client.send({"type": "search_queries", "query": "comets"})
    own = (await client.receive_until("search_results"))[-1]
    await client.send({"type": "search_queries", "query": "comets", "user": dave.guid})
    refused = (await client.receive_until("error"))[-1]

    assert [result["prompt"] for result in own["results"]] == ["carol asks about comets"]
    assert refused["code"] == "forbidden"


async def test_over_the_socket_a_sysop_searches_across_users(carol, dave, connect):
    sysop = await sync(user_on)("02", "root", is_sysop=True)
    await sync(asked)(carol, "carol asks about comets")
    await sync(asked)(dave, "dave asks about comets")
    client = await connect(sysop.guid)

    await client.send({"type": "search_queries", "query": "comets", "per_page": 10})
    found = (await client.receive_until("search_results"))[-1]

    assert found["total"] == 2
    assert {result["user"] for result in found["results"]} == {carol.guid, dave.guid}

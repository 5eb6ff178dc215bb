"""Peer brokers in the admin's pool graph: one node per peer, joined to the pools that list
the workers federation mirrors from what it advertised."""
import decimal

import pytest

from federation import actions
from pools import actions as pools
from pools.models import peer_worker_name

pytestmark = pytest.mark.django_db

GRAPH = "/admin/pools/worker/graph.json"


@pytest.fixture
def shared_pool(peer, fake_server, register_worker):
    """Pool $SHARED: a local worker and peer-b's chat service (it advertised chat and vision)."""
    advertised = actions.Advertisement(
        query_types=["chat", "vision"], aliases=[], capacity=4,
        price_per_query=decimal.Decimal("0.01"), price_per_second=decimal.Decimal("0"),
    )
    actions.record_advertisement(peer.row, advertised)
    register_worker(fake_server, name="local")
    return pools.create_pool("$SHARED", query_type="chat", members=["local", peer_worker_name("peer-b", "chat")])


def test_the_graph_names_a_peer_broker_joined_to_the_pool_that_lists_it(admin_client, shared_pool):
    graph = admin_client.get(GRAPH).json()

    nodes = {node["id"]: node for node in graph["nodes"]}
    peer_node = nodes["peer:peer-b"]
    assert (peer_node["kind"], peer_node["label"], peer_node["colour"]) == ("peer", "peer-b", "green")
    assert peer_node["query_types"] == ["chat", "vision"]
    assert {"source": f"pool:{shared_pool.id}", "target": "peer:peer-b", "weight": 1} in graph["edges"]
    assert {"source": f"pool:{shared_pool.id}", "target": "worker:local", "weight": 1} in graph["edges"]
    assert [node["id"] for node in graph["nodes"] if node["kind"] == "worker"] == ["worker:local"]


def test_a_suspended_peer_is_drawn_black(admin_client, shared_pool, peer):
    actions.suspend_peer(peer.row, acting_user=None)

    graph = admin_client.get(GRAPH).json()

    [peer_node] = [node for node in graph["nodes"] if node["kind"] == "peer"]
    assert (peer_node["label"], peer_node["colour"], peer_node["blacklisted_by"]) == ("peer-b", "black", "operator")

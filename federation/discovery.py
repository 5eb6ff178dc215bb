"""Discovery: the periodic round that advertises this broker to every active peer (and to
those whose approval we await), stores what each advertises back, and asks each for the
peers it knows; brokers learned that way are added as pending, with who introduced them.
`manage.py federation_discover --every N` runs it; `run_broker` starts that."""
from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from django.db.models import Q

from federation import actions, serving
from federation.client import PeerError, call_peer
from federation.models import Peer
from federation.serializers import AdvertiseSerializer

logger = logging.getLogger(__name__)


def advertise_to(peer: Peer, offer: dict) -> Peer:
    """Advertise to one peer and store what it advertises back."""
    answer = async_to_sync(call_peer)(peer.base_url, "POST", "/api/federation/advertise", offer)
    serializer = AdvertiseSerializer(data=answer)
    if not serializer.is_valid():
        raise PeerError(f"{peer.federation_id} advertised garbage: {serializer.errors}")
    return actions.record_advertisement(peer, actions.Advertisement(**serializer.validated_data))


def discover_from(peer: Peer) -> list[Peer]:
    answer = async_to_sync(call_peer)(peer.base_url, "GET", "/api/federation/discover")
    entries = answer.get("peers")
    if not isinstance(entries, list):
        raise PeerError(f"{peer.federation_id} answered discover without a list of peers")
    return actions.learn_peers(peer, [entry for entry in entries if isinstance(entry, dict)])


def run_discovery() -> dict[str, str]:
    """Do one round with every peer; return each peer's outcome, for the log and the command."""
    offer = serving.advertisement().as_data()
    outcomes = {}
    for peer in Peer.objects.filter(Q(status=Peer.Status.ACTIVE) | Q(status=Peer.Status.PENDING, awaiting_their_approval=True)):
        try:
            peer = advertise_to(peer, offer)
            learned = discover_from(peer) if peer.is_active else []
        except PeerError as exc:
            logger.warning("discovery with %s failed: %s", peer.federation_id, exc)
            outcomes[peer.federation_id] = f"failed: {exc}"
            continue
        outcomes[peer.federation_id] = f"{peer.status}, advertises {', '.join(peer.advertised.get('query_types') or []) or 'nothing'}" + (
            f"; introduced {', '.join(new.federation_id for new in learned)}" if learned else ""
        )
    return outcomes

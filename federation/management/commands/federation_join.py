"""Join another broker with the invitation its operator gave."""
from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError

from federation import actions, identity
from federation.client import PeerError, call_peer, fetch_well_known
from federation.discovery import advertise_to
from federation.serving import advertisement
from rentahal.errors import BrokerError


class Command(BaseCommand):
    help = "Join the broker at URL with its invitation TOKEN: exchange keys, then both sides list each other."

    def add_arguments(self, parser):
        parser.add_argument("url")
        parser.add_argument("token", nargs="?", default="", help="Without one, the join waits for the other operator's approval.")

    def handle(self, *args, url: str, token: str, **options):
        url = url.rstrip("/")
        try:
            document = async_to_sync(fetch_well_known)(url)
            answer = async_to_sync(call_peer)(url, "POST", "/api/federation/join", {
                "federation_id": identity.federation_id(),
                "base_url": identity.base_url(),
                "keys": identity.published_keys(),
                "token": token,
            })
        except PeerError as exc:
            code = exc.body.get("error", {}).get("code") if isinstance(exc.body.get("error"), dict) else None
            raise CommandError(f"join refused{f' ({code})' if code else ''}: {exc}") from None
        if answer.get("federation_id") != document.get("federation_id"):
            raise CommandError("the broker answered the join as another broker than its well-known document names")
        try:
            peer = actions.record_joined(document=answer, accepted=answer.get("status") == "active", acting_user=None)
        except BrokerError as exc:
            raise CommandError(exc.message) from None
        if peer.is_active:
            self.stdout.write(f"joined {peer.federation_id} at {peer.base_url}: active")
            try:
                peer = advertise_to(peer, advertisement().as_data())
            except PeerError as exc:
                self.stderr.write(f"the first advertisement failed (discovery tries again): {exc}")
            else:
                self.stdout.write(f"{peer.federation_id} serves {', '.join(peer.advertised.get('query_types') or []) or 'nothing yet'}")
        else:
            self.stdout.write(f"asked to join {peer.federation_id}: pending until its operator approves")

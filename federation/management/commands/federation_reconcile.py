"""Compare our settlement rows with a peer's own, over a signed call, and list every mismatch."""
from django.core.management.base import BaseCommand, CommandError

from federation import actions, settlement
from federation.client import PeerError
from federation.management.commands.federation_settlement import parse_since
from rentahal.errors import BrokerError


class Command(BaseCommand):
    help = "Fetch PEER's settlement rows with us and list every query the two sides recorded differently."

    def add_arguments(self, parser):
        parser.add_argument("peer", help="The peer's federation id.")
        parser.add_argument("--since", help="ISO 8601 date or time (UTC if no zone); default: all time.")

    def handle(self, *args, peer: str, since, **options):
        try:
            found = actions.find_peer(peer)
            mismatches = settlement.reconcile(found, parse_since(since))
        except (BrokerError, PeerError) as exc:
            raise CommandError(str(exc)) from None
        for mismatch in mismatches:
            self.stdout.write(f"{mismatch.query_id}: {mismatch.what}: ours {mismatch.ours}, theirs {mismatch.theirs}")
        if mismatches:
            raise CommandError(f"{len(mismatches)} mismatch(es) with {peer}")
        self.stdout.write(f"settlement with {peer} agrees")

"""Print both sides' settlement totals with a peer for a period."""
import datetime

from django.core.management.base import BaseCommand, CommandError

from federation import actions, settlement
from rentahal.errors import BrokerError


def parse_since(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        since = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--since takes an ISO 8601 date or time, not {value!r}") from None
    return since if since.tzinfo else since.replace(tzinfo=datetime.timezone.utc)


class Command(BaseCommand):
    help = "Print what we sent PEER and what we served it (queries, seconds, amount) since --since."

    def add_arguments(self, parser):
        parser.add_argument("peer", help="The peer's federation id.")
        parser.add_argument("--since", help="ISO 8601 date or time (UTC if no zone); default: all time.")

    def handle(self, *args, peer: str, since, **options):
        try:
            found = actions.find_peer(peer)
        except BrokerError as exc:
            raise CommandError(exc.message) from None
        for direction, entry in settlement.totals(found, parse_since(since)).items():
            label = f"we asked {peer}" if direction == "sent" else f"{peer} asked us"
            self.stdout.write(
                f"{direction}: {entry['queries']} queries ({entry['done']} done) {label}, "
                f"{entry['seconds']:.3f} s, amount {entry['amount']}"
            )

"""Advertise to peers, store their offers and learn the peers they know (federation.discovery)."""
from federation.discovery import run_discovery
from rentahal.housekeeping import HousekeepingCommand


class Command(HousekeepingCommand):
    help = "Advertise to every active peer and ask each for the peers it knows (new ones are added as pending)."

    def run_round(self, *, repeating: bool, **options) -> None:
        for peer, outcome in run_discovery().items():
            if not repeating or outcome.startswith("failed") or "introduced" in outcome:
                self.stdout.write(f"{peer}: {outcome}")

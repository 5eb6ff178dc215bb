"""`manage.py sysop_claim_token`: print a one-time token that makes whoever presents it first
a sysop (a fresh deployment's first sysop, without looking up their guid)."""
from django.conf import settings
from django.core.management.base import BaseCommand

from accounts.actions.users import issue_sysop_claim


class Command(BaseCommand):
    help = (
        "Print a single-use sysop claim token. Open the broker's page as /?claim=TOKEN (or send "
        "{\"type\": \"claim_sysop\", \"token\": TOKEN} on /ws) before it expires to become sysop."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", help="the broker's address, to print the page link with the token in it")

    def handle(self, *args, **options):
        token, expires_at = issue_sysop_claim()
        minutes = settings.RENTAHAL_SYSOP_CLAIM_TTL / 60
        where = f"{options['url'].rstrip('/')}/?claim={token}" if options["url"] else f"/?claim={token} on the broker's page"
        self.stdout.write(token)
        self.stderr.write(f"Open {where} within {minutes:g} minutes (until {expires_at:%Y-%m-%d %H:%M:%S %Z}) to become sysop; it works once.")

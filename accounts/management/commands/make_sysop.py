"""`manage.py make_sysop <guid or nickname>`: the operator names a sysop (a fresh deployment's
first one, since nobody becomes sysop by arriving first unless FIRST_VISITOR_IS_SYSOP)."""
from django.core.management.base import BaseCommand, CommandError

from accounts.actions.users import find_user_by_guid_or_nickname, set_sysop
from rentahal.errors import BrokerError


class Command(BaseCommand):
    help = (
        "Make a user sysop, by guid or nickname (open the broker's page once to become a user; "
        "it shows your nickname). --revoke takes it away."
    )

    def add_arguments(self, parser):
        parser.add_argument("user", help="the user's guid (the user_guid cookie) or nickname")
        parser.add_argument("--revoke", action="store_true", help="take sysop away instead")

    def handle(self, *args, **options):
        try:
            user = find_user_by_guid_or_nickname(options["user"])
            # The operator at the shell is the system (rentahal.actors): acting_user=None.
            user = set_sysop(user.guid, not options["revoke"], acting_user=None)
        except BrokerError as exc:
            raise CommandError(exc.message) from None
        state = "is now a sysop" if user.is_sysop else "is no longer a sysop"
        self.stdout.write(f"{user.nickname} ({user.guid}) {state}")

"""Create a single-use invitation for another broker to join this one."""
from django.core.management.base import BaseCommand

from federation import actions, identity


class Command(BaseCommand):
    help = "Create a single-use invitation and print the command the other broker's operator runs."

    def add_arguments(self, parser):
        parser.add_argument("--hours", type=float, default=None, help="How long it is valid (FEDERATION_INVITATION_HOURS).")
        parser.add_argument("--note", default="", help="Whom it is for, for the admin.")

    def handle(self, *args, hours, note, **options):
        invitation, token = actions.create_invitation(note=note, hours=hours, acting_user=None)
        self.stdout.write(f"token: {token}")
        self.stdout.write(f"expires: {invitation.expires_at.isoformat()}")
        self.stdout.write(f"on the other broker: manage.py federation_join {identity.base_url()} {token}")

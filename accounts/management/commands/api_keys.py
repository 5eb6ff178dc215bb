"""Operators' API keys: make one for a user (its secret printed once), list a user's, revoke one."""
from django.core.management.base import BaseCommand, CommandError

from accounts.actions.keys import create_key, list_keys, revoke_key
from accounts.actions.users import find_user_by_guid_or_nickname
from rentahal.errors import BrokerError


class Command(BaseCommand):
    help = "Make (create USER), list (list USER) or revoke (revoke KEY_ID) API keys; USER is a guid or nickname."

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="command", required=True)
        create = commands.add_parser("create")
        create.add_argument("user")
        create.add_argument("--name", default="")
        create.add_argument("--requests-per-minute", type=int, default=0)
        create.add_argument("--max-in-flight", type=int, default=0)
        create.add_argument("--allow", action="append", default=[], help="an alias, worker or model it may use (repeat)")
        create.add_argument("--daily-budget")
        create.add_argument("--total-budget")
        commands.add_parser("list").add_argument("user")
        commands.add_parser("revoke").add_argument("key_id", type=int)

    def handle(self, *args, **options):
        try:
            if options["command"] == "create":
                user = find_user_by_guid_or_nickname(options["user"])
                key, secret = create_key(
                    user.guid,
                    acting_user=None,
                    name=options["name"],
                    requests_per_minute=options["requests_per_minute"],
                    max_in_flight=options["max_in_flight"],
                    allowed_models=options["allow"],
                    daily_budget=options["daily_budget"],
                    total_budget=options["total_budget"],
                )
                self.stdout.write(f"key {key.pk} for {user.nickname}: {secret}\n(shown once; keep it now)")
            elif options["command"] == "list":
                user = find_user_by_guid_or_nickname(options["user"])
                for key in list_keys(user.guid):
                    state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "live"
                    self.stdout.write(f"{key.pk}\t{key.prefix}…\t{key.name or '-'}\t{state}")
            else:
                key = revoke_key(options["key_id"], acting_user=None)
                self.stdout.write(f"key {key.pk} ({key.prefix}…) revoked")
        except BrokerError as exc:
            raise CommandError(exc.message) from None

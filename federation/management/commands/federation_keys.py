"""Create or rotate this broker's Ed25519 federation key, or show the published keys."""
import datetime

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from federation import actions, identity


class Command(BaseCommand):
    help = (
        "create: write a new private key to FEDERATION_KEY_FILE (refused if one exists); rotate: replace it, "
        "keeping the old public key published (and verifying) for FEDERATION_KEY_OVERLAP_SECONDS; show: the published keys."
    )

    def add_arguments(self, parser):
        parser.add_argument("operation", choices=["create", "rotate", "show"])
        parser.add_argument("--if-missing", action="store_true", help="create: do nothing when a key exists (first start).")

    def handle(self, *args, operation: str, if_missing: bool, **options):
        if operation == "show":
            for key in identity.published_keys():
                self.stdout.write(f"{key['key_id']} {key['public_key']} valid until {key['valid_until'] or 'rotated'}")
            return
        env_key = bool(settings.RENTAHAL_FEDERATION_PRIVATE_KEY)
        try:
            old = identity.current_public_key()
        except identity.MissingKey:
            old = None
        if operation == "create" and old is not None:
            if if_missing:
                return
            raise CommandError("A federation key exists already; use `rotate` to replace it.")
        if operation == "rotate" and old is None:
            raise CommandError("There is no federation key to rotate; use `create`.")
        key, pem = identity.new_private_key_pem()
        if old is not None:
            until = timezone.now() + datetime.timedelta(seconds=settings.RENTAHAL_FEDERATION_KEY_OVERLAP)
            actions.record_retired_key(old, valid_until=until, acting_user=None)
            self.stdout.write(f"key {identity.key_id_of(old)} stays published until {until.isoformat()}")
        new_id = identity.key_id_of(identity.encode_public(key.public_key()))
        if env_key:
            self.stdout.write("FEDERATION_PRIVATE_KEY is set: put this key there (and restart) instead of the file:")
            self.stdout.write(pem)
        else:
            path = identity.write_key_file(pem)
            self.stdout.write(f"wrote key {new_id} to {path} (readable by this user only)")

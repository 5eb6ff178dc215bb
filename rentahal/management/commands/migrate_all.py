"""Migrate default and every shard database, one after another."""
from django.core.management import call_command
from django.core.management.base import BaseCommand

from rentahal.sharding import shard_aliases


class Command(BaseCommand):
    help = "Run migrate on default and on every shard database (SHARD_URLS)."

    def handle(self, *args, **options):
        aliases = ["default", *[alias for alias in shard_aliases() if alias != "default"]]
        for number, alias in enumerate(aliases, start=1):
            self.stdout.write(f"migrating {alias} ({number}/{len(aliases)})")
            call_command("migrate", database=alias, interactive=False, verbosity=options["verbosity"], stdout=self.stdout)
        self.stdout.write(f"migrated {len(aliases)} databases")

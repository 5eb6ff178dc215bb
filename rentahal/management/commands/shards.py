"""List the shards with their users, queries and ledger rows, and the prefixes mapped to each."""
from django.core.management.base import BaseCommand

from rentahal.shard_placement import Rows, current_map, rows_by_prefix
from rentahal.sharding import shard_aliases


class Command(BaseCommand):
    help = "List shards with user, query and ledger counts."

    def handle(self, *args, **options):
        shard_map = current_map()
        total = Rows()
        for alias in shard_aliases():
            self.stdout.write(f"counting {alias} ...")
            rows = Rows()
            for prefix_rows in rows_by_prefix(alias).values():
                rows.add(prefix_rows)
            total.add(rows)
            mapped = sum(1 for shard in shard_map.values() if shard == alias)
            self.stdout.write(f"{alias}: {rows} ({mapped} prefixes mapped)")
        self.stdout.write(f"total: {total}")

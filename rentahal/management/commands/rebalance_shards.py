"""Plan prefix moves that even out the shards; a dry run unless --apply."""
from django.core.management.base import BaseCommand, CommandError

from rentahal.shard_moves import MoveError, move_prefix
from rentahal.shard_placement import plan_rebalance, shard_loads


class Command(BaseCommand):
    help = "Plan moves that even out rows per shard; print them (dry run) or, with --apply, make them."

    def add_arguments(self, parser):
        parser.add_argument("--apply", action="store_true", help="Make the planned moves, one prefix at a time.")

    def handle(self, *args, apply, **options):
        loads, _ = shard_loads()
        self.stdout.write("rows per shard: " + ", ".join(f"{alias} {rows}" for alias, rows in loads.items()))
        plan = plan_rebalance()
        if not plan:
            self.stdout.write("balanced: no move would narrow the gap")
            return
        for number, planned in enumerate(plan, start=1):
            self.stdout.write(f"{number}/{len(plan)} {planned}")
        if not apply:
            self.stdout.write("dry run: nothing moved; run with --apply to make these moves")
            return
        for number, planned in enumerate(plan, start=1):
            self.stdout.write(f"applying {number}/{len(plan)}: {planned}")
            try:
                move_prefix(planned.prefix, planned.target, progress=self.stdout.write)
            except MoveError as exc:
                raise CommandError(f"stopped at {planned}: {exc}") from None
        self.stdout.write(f"rebalanced: {len(plan)} prefixes moved")

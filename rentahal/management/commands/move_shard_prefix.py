"""Move one guid prefix to another shard while the broker runs, or finish or undo a move."""
from django.core.management.base import BaseCommand, CommandError

from rentahal.shard_moves import MoveError, move_prefix, resume_move, rollback_move


class Command(BaseCommand):
    help = "Move the users of a guid prefix (two hex characters) to SHARD; --resume or --rollback an interrupted move."

    def add_arguments(self, parser):
        parser.add_argument("prefix")
        parser.add_argument("shard", nargs="?")
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--resume", action="store_true", help="Finish an interrupted move.")
        group.add_argument("--rollback", action="store_true", help="Undo an interrupted move.")

    def handle(self, *args, prefix, shard, resume, rollback, **options):
        try:
            if resume:
                resume_move(prefix, shard, progress=self.stdout.write)
            elif rollback:
                rollback_move(prefix, shard, progress=self.stdout.write)
            elif shard is None:
                raise CommandError("Name the shard to move to, or give --resume or --rollback.")
            else:
                move_prefix(prefix, shard, progress=self.stdout.write)
        except MoveError as exc:
            raise CommandError(str(exc)) from None

"""Check every user's rows are on exactly the shard the map names; report interrupted moves."""
from django.core.management.base import BaseCommand, CommandError

from rentahal.shard_placement import verify


class Command(BaseCommand):
    help = "Verify shard placement: orphans, duplicates and interrupted moves. Exit status 1 if any."

    def handle(self, *args, **options):
        report = verify(progress=self.stdout.write)
        for line in report.moves:
            self.stdout.write(line)
        for line in report.problems:
            self.stdout.write(line)
        if not report.is_clean:
            raise CommandError(f"{len(report.problems)} problems, {len(report.moves)} interrupted moves.")
        self.stdout.write("ok: every row is on the shard the map names")

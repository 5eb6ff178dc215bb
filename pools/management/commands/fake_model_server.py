"""`manage.py fake_model_server`: run the fake model server in the foreground for manual tests and benchmarks."""
import asyncio
import dataclasses

from django.core.management.base import BaseCommand, CommandError

from pools.testing.fake_answers import FakeConfig
from pools.testing.fake_server import FakeModelServer


class Command(BaseCommand):
    help = "Serve every model-server wire format from one port with deterministic answers and failure knobs."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        # One flag per knob, taken from FakeConfig so the two never drift apart.
        for field in dataclasses.fields(FakeConfig):
            flag = "--" + field.name.replace("_", "-")
            if type(field.default) is bool:
                parser.add_argument(flag, action="store_true", help=field.metadata["help"])
            else:
                parser.add_argument(flag, type=type(field.default), default=field.default, help=field.metadata["help"])

    def handle(self, *args, **options):
        knobs = {field.name: options[field.name] for field in dataclasses.fields(FakeConfig)}
        try:
            server = FakeModelServer(**knobs)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        try:
            asyncio.run(self.serve(server, options["host"], options["port"]))
        except KeyboardInterrupt:
            pass

    async def serve(self, server: FakeModelServer, host: str, port: int) -> None:
        await server.start(host, port)
        self.stdout.write(f"Fake model server listening on {server.url} (Ctrl-C to stop)")
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

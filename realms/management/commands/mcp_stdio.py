"""`manage.py mcp_stdio`: the pool tools as an MCP server on standard input and output."""
import os

import anyio
from django.core.management.base import BaseCommand, CommandError

from realms.agents.callers import NotAuthenticated, authenticate_token
from realms.agents.mcp_server import server, stdio_caller


class Command(BaseCommand):
    help = (
        "Serve rentahal's pool tools over MCP's stdio transport (an agent host launches this). "
        "The caller is the staff login of the token in RENTAHAL_TOKEN."
    )

    def handle(self, *args, **options):
        try:
            caller = authenticate_token(os.environ.get("RENTAHAL_TOKEN", ""))
        except NotAuthenticated as exc:
            raise CommandError(f"{exc.message} Set RENTAHAL_TOKEN to a staff token (manage.py drf_create_token <user>).") from None
        stdio_caller.set(caller)
        anyio.run(server.run_stdio_async)

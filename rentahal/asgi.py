"""ASGI entry point: HTTP goes to Django (and /mcp to the agents' MCP server); once its Origin
passes (rentahal.origins), /ws to the realms consumer, /ws/dashboard (the admin's session
login) to the operators' dashboard and /ws/events to the agents' event stream."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rentahal.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddleware, AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import CookieMiddleware, SessionMiddleware  # noqa: E402
from django.urls import path  # noqa: E402

from realms.agents.events import EventConsumer  # noqa: E402
from realms.agents.mcp_server import http_app as mcp_app  # noqa: E402
from realms.consumers import QueryConsumer  # noqa: E402
from realms.dashboard import DashboardConsumer  # noqa: E402
from rentahal.origins import ConfiguredHostsOriginValidator  # noqa: E402


async def http(scope, receive, send):
    """Send /mcp to the agents' MCP server (it authenticates its callers), the rest to Django."""
    if scope["path"] == "/mcp" or scope["path"].startswith("/mcp/"):
        await mcp_app(scope, receive, send)
    else:
        await django_asgi_app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http,
        "websocket": ConfiguredHostsOriginValidator(
            CookieMiddleware(
                URLRouter([
                    path("ws", QueryConsumer.as_asgi()),
                    path("ws/dashboard", SessionMiddleware(AuthMiddleware(DashboardConsumer.as_asgi()))),
                    path("ws/events", AuthMiddlewareStack(EventConsumer.as_asgi())),
                ])
            )
        ),
    }
)

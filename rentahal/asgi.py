"""ASGI entry point: HTTP goes to Django (the programs' doors to a handler of their own, and /mcp
to the agents' MCP server); once its Origin
passes (rentahal.origins), /ws to the realms consumer, /ws/dashboard (the admin's session
login) to the operators' dashboard and /ws/events to the agents' event stream."""
import os

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rentahal.settings")
django_asgi_app = get_asgi_application()


class DoorsHandler(ASGIHandler):
    """Django for the programs' doors (/v1, the classic routes), behind RENTAHAL_DOOR_MIDDLEWARE.

    Django's own middleware run each hook through `sync_to_async`: the nine the page and the
    admin need (sessions, CSRF, auth, messages, static files) took a /v1 request through a
    dozen thread hops, a quarter of daphne's CPU for it (bench/README.md). A door checks its
    own API key and is CSRF-exempt, so it keeps the security headers, the Host check and the
    store-outage answer only.
    Django reads its middleware from settings alone, so the list is swapped in while this
    handler builds its chain, once, at startup.
    """

    def load_middleware(self, is_async=False):
        browser_middleware = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.RENTAHAL_DOOR_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = browser_middleware


doors_app = DoorsHandler()

from channels.auth import AuthMiddleware, AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import CookieMiddleware, SessionMiddleware  # noqa: E402
from django.urls import path  # noqa: E402

from realms.agents.events import EventConsumer  # noqa: E402
from realms.agents.mcp_server import http_app as mcp_app  # noqa: E402
from realms.consumers import QueryConsumer  # noqa: E402
from realms.dashboard import DashboardConsumer  # noqa: E402
from realms.doors.urls import is_door_path  # noqa: E402
from rentahal.origins import ConfiguredHostsOriginValidator  # noqa: E402


async def http(scope, receive, send):
    """Send /mcp to the agents' MCP server (it authenticates its callers), the doors to their
    own handler, the rest to Django."""
    if scope["path"] == "/mcp" or scope["path"].startswith("/mcp/"):
        await mcp_app(scope, receive, send)
    elif is_door_path(scope["path"]):
        await doors_app(scope, receive, send)
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

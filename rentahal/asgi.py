"""ASGI entry point: HTTP goes to Django; once its Origin passes (rentahal.origins), /ws to the
realms consumer and /ws/dashboard, with the admin's session login, to the operators' dashboard."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rentahal.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import CookieMiddleware, SessionMiddleware  # noqa: E402
from django.urls import path  # noqa: E402

from realms.consumers import QueryConsumer  # noqa: E402
from realms.dashboard import DashboardConsumer  # noqa: E402
from rentahal.origins import ConfiguredHostsOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": ConfiguredHostsOriginValidator(
            CookieMiddleware(
                URLRouter([
                    path("ws", QueryConsumer.as_asgi()),
                    path("ws/dashboard", SessionMiddleware(AuthMiddleware(DashboardConsumer.as_asgi()))),
                ])
            )
        ),
    }
)

"""Which /ws handshakes are let in by their Origin: a browser page of a configured host only;
and the Host check of the programs' HTTP doors (`AllowedHostMiddleware`).

Cross-site WebSocket hijacking needs a browser: a page on another site opens /ws, and the
browser attaches the victim's (perhaps a sysop's) guid cookie. Browsers always send
`Origin` on a WebSocket handshake, so an Origin whose host is not in ALLOWED_HOSTS (with
Django's patterns: `.example.com` for a domain and its subdomains) is refused before the
consumer runs; `Origin: null` (sandboxed frames, files) is refused too.

A handshake with no Origin at all is let in: it comes from a non-browser client (a script,
a bot, another broker), which could send any Origin it liked, so refusing it would protect
nothing and break such clients; they prove who they are with their guid like anyone else.
"""
from asgiref.sync import markcoroutinefunction
from channels.security.websocket import OriginValidator
from django.conf import settings


class ConfiguredHostsOriginValidator(OriginValidator):
    """channels' OriginValidator over ALLOWED_HOSTS, read at each handshake (so a changed setting
    applies without a new application), letting in handshakes that carry no Origin."""

    def __init__(self, application):
        self.application = application

    @property
    def allowed_origins(self) -> list[str]:
        return settings.ALLOWED_HOSTS

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


class AllowedHostMiddleware:
    """Refuse a request whose Host is not in ALLOWED_HOSTS with Django's 400, on the event loop.

    Django checks the Host only when something calls `request.get_host()`; in the browser
    chain CommonMiddleware does, through a thread hop. The doors (RENTAHAL_DOOR_MIDDLEWARE)
    run without it, so this makes the same check for them at no such cost.
    """

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        request.get_host()
        return await self.get_response(request)

"""Which /ws handshakes are let in by their Origin: a browser page of a configured host only.

Cross-site WebSocket hijacking needs a browser: a page on another site opens /ws, and the
browser attaches the victim's (perhaps a sysop's) guid cookie. Browsers always send
`Origin` on a WebSocket handshake, so an Origin whose host is not in ALLOWED_HOSTS (with
Django's patterns: `.example.com` for a domain and its subdomains) is refused before the
consumer runs; `Origin: null` (sandboxed frames, files) is refused too.

A handshake with no Origin at all is let in: it comes from a non-browser client (a script,
a bot, another broker), which could send any Origin it liked, so refusing it would protect
nothing and break such clients; they prove who they are with their guid like anyone else.
"""
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

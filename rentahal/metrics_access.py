"""Who may scrape /metrics: a holder of the bearer token (METRICS_TOKEN), or a client whose
address is in METRICS_ALLOWED_ADDRESSES (addresses or networks). Nobody else, by default.

The counters name every realm and worker and show load and error rates: a map for an
attacker. The address is the TCP peer (REMOTE_ADDR), never a forwarded header a client can
write; behind a reverse proxy every request comes from the proxy, so use the token there.
A refusal takes the APIs' one error shape (rentahal.errors): 401 with
`WWW-Authenticate: Bearer`, whether the token was missing or wrong.
"""
import hmac
import ipaddress
import logging

from django.conf import settings
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import BasePermission

logger = logging.getLogger(__name__)

BEARER = "Bearer"
SCRAPER = "metrics scraper"


class MetricsTokenAuthentication(BaseAuthentication):
    """Turn `Authorization: Bearer <METRICS_TOKEN>` into the scraper's credential."""

    def authenticate(self, request):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != BEARER or not token:
            return None
        expected = settings.RENTAHAL_METRICS_TOKEN
        if not expected or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise AuthenticationFailed("That metrics token is not valid.")
        return (None, SCRAPER)

    def authenticate_header(self, request):
        return f'{BEARER} realm="metrics"'


def is_allowed_address(address: str) -> bool:
    """Return whether the client address is in METRICS_ALLOWED_ADDRESSES."""
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    if client.version == 6 and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    for entry in settings.RENTAHAL_METRICS_ALLOWED_ADDRESSES:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            logger.warning("METRICS_ALLOWED_ADDRESSES entry %r is not an address or network; ignored", entry)
            continue
        if client.version == network.version and client in network:
            return True
    return False


class IsMetricsScraper(BasePermission):
    message = "Scraping /metrics needs the metrics bearer token or an allowed client address."

    def has_permission(self, request, view):
        return request.auth == SCRAPER or is_allowed_address(request.META.get("REMOTE_ADDR", ""))


class AnyAccept(BaseContentNegotiation):
    """Answer whatever a scraper accepts: the exposition is Prometheus text whatever it asks,
    and a refusal is JSON, so DRF's negotiation must not turn a scraper's Accept into a 406."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return (renderers[0], renderers[0].media_type)

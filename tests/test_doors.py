"""Who gets through which door over HTTP: the pools and realms APIs, django-rq's dashboard and
/metrics, for every kind of visitor; CSRF on cookie-authenticated writes; the deploy check."""
import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from rest_framework.test import APIClient

from conftest import OPERATOR_PERMISSIONS, make_staff
from pools.models import PoolAlias, Worker
from realms.models import Realm

pytestmark = pytest.mark.django_db

PERSONAS = [
    "anonymous", "user A", "user B", "sysop cookie", "staff without permissions",
    "staff with the model permissions", "staff with the dashboard permission", "superuser",
]


@pytest.fixture
def as_persona(alice, bob, sysop, default_realms):
    """Return a client that visits as the named persona: a broker user by guid cookie, or a
    Django login by session."""

    def visit(persona: str) -> APIClient:
        client = APIClient()
        cookies = {"user A": alice.guid, "user B": bob.guid, "sysop cookie": sysop.guid}
        logins = {
            "staff without permissions": lambda: make_staff("plain-staff"),
            "staff with the model permissions": lambda: make_staff("operator", *OPERATOR_PERMISSIONS),
            "staff with the dashboard permission": lambda: make_staff("rq-operator", "django_rq.admin"),
            "superuser": lambda: make_staff("root", is_superuser=True),
        }
        if persona in cookies:
            client.cookies["user_guid"] = cookies[persona]
        elif persona in logins:
            client.force_login(logins[persona]())
        return client

    return visit


@pytest.fixture
def two_workers(register_worker, fake_server):
    return [register_worker(fake_server, name=name) for name in ("alpha", "beta")]


def read_pools(client):
    return client.get("/api/pools/workers/")


def write_pools(client):
    """Create a pool and remove a worker: both pools models written."""
    created = client.post("/api/pools/", {"name": "$CHAT", "query_type": "chat", "members": ["alpha"]}, format="json")
    removed = client.delete("/api/pools/workers/beta/")
    return created if created.status_code != 201 else removed


def read_realms(client):
    return client.get("/api/realms/")


def write_realms(client):
    return client.post("/api/realms/", {"name": "$NEW", "primary_query_type": "chat"}, format="json")


def rq_dashboard(client):
    return client.get("/admin/rq/")


def rq_dashboard_in_admin(client):
    return client.get("/admin/django_rq/dashboard/")


def scrape_metrics(client):
    return client.get("/metrics")


REFUSED = 403
TO_LOGIN = 302
# /metrics is for scrapers (a token or an allowed address), not for logins of any kind.
UNSCRAPED = 401

# Expected status of each door, by persona: a broker user's cookie is nobody over HTTP,
# except that a sysop's may read realms; staff need each model's permissions, and the
# dashboard its own.
MATRIX = {
    "anonymous": (REFUSED, REFUSED, REFUSED, REFUSED, TO_LOGIN, TO_LOGIN, UNSCRAPED),
    "user A": (REFUSED, REFUSED, REFUSED, REFUSED, TO_LOGIN, TO_LOGIN, UNSCRAPED),
    "user B": (REFUSED, REFUSED, REFUSED, REFUSED, TO_LOGIN, TO_LOGIN, UNSCRAPED),
    "sysop cookie": (REFUSED, REFUSED, 200, REFUSED, TO_LOGIN, TO_LOGIN, UNSCRAPED),
    "staff without permissions": (REFUSED, REFUSED, REFUSED, REFUSED, REFUSED, REFUSED, UNSCRAPED),
    "staff with the model permissions": (200, 204, 200, 201, REFUSED, REFUSED, UNSCRAPED),
    "staff with the dashboard permission": (REFUSED, REFUSED, REFUSED, REFUSED, 200, 200, UNSCRAPED),
    "superuser": (200, 204, 200, 201, 200, 200, UNSCRAPED),
}
DOORS = [read_pools, write_pools, read_realms, write_realms, rq_dashboard, rq_dashboard_in_admin, scrape_metrics]


@pytest.mark.parametrize("door", DOORS, ids=[door.__name__ for door in DOORS])
@pytest.mark.parametrize("persona", PERSONAS)
def test_each_visitor_gets_through_only_the_doors_meant_for_them(persona, door, as_persona, two_workers):
    expected = MATRIX[persona][DOORS.index(door)]

    response = door(as_persona(persona))

    assert response.status_code == expected
    if expected in (REFUSED, UNSCRAPED) and door not in (rq_dashboard, rq_dashboard_in_admin):
        assert response.json()["error"]["code"] in ("forbidden", "not_authenticated")


def test_a_refused_write_changes_nothing(as_persona, two_workers):
    for persona in ("sysop cookie", "staff without permissions", "staff with the dashboard permission"):
        client = as_persona(persona)
        write_pools(client)
        write_realms(client)

    assert not PoolAlias.objects.exists()
    assert Worker.objects.filter(name="beta").exists()
    assert not Realm.objects.filter(name="$NEW").exists()


def test_http_basic_credentials_are_not_accepted(default_realms):
    make_staff("root", is_superuser=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic cm9vdDpwdw==")  # root:pw

    response = client.get("/api/realms/")

    assert response.status_code == REFUSED


def test_a_logged_in_write_without_the_csrf_token_is_refused(operator, default_realms):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(operator)

    response = write_realms(client)

    assert response.status_code == REFUSED
    assert "CSRF" in response.json()["error"]["message"]
    assert not Realm.objects.filter(name="$NEW").exists()


def test_a_logged_in_write_with_the_csrf_token_goes_through(operator, default_realms):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(operator)
    token = "k" * 32
    client.cookies["csrftoken"] = token

    response = client.post(
        "/api/realms/", {"name": "$NEW", "primary_query_type": "chat"}, format="json", HTTP_X_CSRFTOKEN=token
    )

    assert response.status_code == 201


# -- /metrics -----------------------------------------------------------------------------


def test_metrics_refusal_asks_for_a_bearer_token_in_the_one_error_shape(client):
    response = client.get("/metrics")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert response.json() == {
        "error": {
            "code": "not_authenticated",
            "message": "Authentication credentials were not provided.",
        }
    }


def test_metrics_are_served_for_the_configured_bearer_token(client, settings):
    settings.RENTAHAL_METRICS_TOKEN = "scrape-me"

    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me", HTTP_ACCEPT="text/plain")

    assert response.status_code == 200
    assert b"rentahal_queries" in response.content


@pytest.mark.parametrize("configured", ["scrape-me", ""], ids=["another token", "no token configured"])
def test_metrics_refuse_a_wrong_bearer_token(client, settings, configured):
    settings.RENTAHAL_METRICS_TOKEN = configured

    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer guessed")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


@pytest.mark.parametrize(
    ("allowed", "client_address", "status"),
    [
        (["127.0.0.1"], "127.0.0.1", 200),
        (["10.1.0.0/16"], "10.1.2.3", 200),
        (["10.1.0.0/16"], "::ffff:10.1.2.3", 200),
        (["::1"], "::1", 200),
        (["10.1.0.0/16"], "10.2.0.1", 401),
        ([], "127.0.0.1", 401),
        (["not an address"], "127.0.0.1", 401),
    ],
)
def test_metrics_are_served_to_allowed_addresses_only(client, settings, allowed, client_address, status):
    settings.RENTAHAL_METRICS_ALLOWED_ADDRESSES = allowed

    response = client.get("/metrics", REMOTE_ADDR=client_address)

    assert response.status_code == status


def test_a_forwarded_header_does_not_make_an_address_allowed(client, settings):
    settings.RENTAHAL_METRICS_ALLOWED_ADDRESSES = ["10.0.0.1"]

    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="10.0.0.1")

    assert response.status_code == 401


# -- check --deploy -------------------------------------------------------------------------


def deploy_check_ids() -> set[str]:
    return {message.id for message in checks.run_checks(include_deployment_checks=True) if message.id.startswith("rentahal.")}


def test_the_development_secret_key_fails_the_deploy_check(settings):
    settings.SECRET_KEY = settings.RENTAHAL_DEVELOPMENT_SECRET_KEY

    with pytest.raises(SystemCheckError, match="rentahal.E101"):
        call_command("check", deploy=True)


def test_a_secret_key_of_its_own_passes_the_deploy_check(settings):
    settings.SECRET_KEY = "6f1c2b9e0d4a7c3e8b5f1a2d9c0e7b4a3f6d8c1e5b2a9f0d7c4e1b8a5f2c9e6d3"

    assert "rentahal.E101" not in deploy_check_ids()


def test_the_deploy_check_warns_of_any_host_and_of_the_first_visitor_becoming_sysop(settings):
    settings.ALLOWED_HOSTS = ["*"]
    settings.RENTAHAL_FIRST_VISITOR_IS_SYSOP = True

    assert {"rentahal.W101", "rentahal.W102"} <= deploy_check_ids()


def test_the_shipped_settings_answer_only_this_machine_and_make_nobody_sysop_by_arriving():
    from rentahal import settings as shipped

    assert set(shipped.ALLOWED_HOSTS) == {"localhost", "127.0.0.1", "[::1]"}
    assert shipped.RENTAHAL_FIRST_VISITOR_IS_SYSOP is False
    assert shipped.RENTAHAL_METRICS_ALLOWED_ADDRESSES == []


async def get_through_the_asgi_app(path: str, host: bytes = b"127.0.0.1") -> dict:
    from channels.testing import HttpCommunicator

    from rentahal.asgi import application

    return await HttpCommunicator(application, "GET", path, headers=[(b"host", host)]).get_response()


async def test_a_programs_door_keeps_the_security_headers_without_the_browser_middleware():
    door = await get_through_the_asgi_app("/v1/models")
    page = await get_through_the_asgi_app("/favicon.ico")

    door_headers, page_headers = dict(door["headers"]), dict(page["headers"])
    assert door["status"] == 401
    assert door_headers[b"X-Content-Type-Options"] == b"nosniff"
    # The browser chain's clickjacking header marks the middleware a door does without.
    assert b"X-Frame-Options" not in door_headers
    assert page_headers[b"X-Frame-Options"] == b"DENY"


async def test_a_programs_door_refuses_a_host_not_allowed_as_the_page_does():
    door = await get_through_the_asgi_app("/v1/models", host=b"evil.example")
    page = await get_through_the_asgi_app("/favicon.ico", host=b"evil.example")

    assert (door["status"], page["status"]) == (400, 400)

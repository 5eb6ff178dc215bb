"""A worker's address is checked against the outbound policy when it is registered: one
validator on the model, so the admin, the pools API, a sysop's frame and a command refuse
the same addresses with the same code, `forbidden_address`."""
import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.test import override_settings

from pools import actions
from pools.models import Worker, validate_worker_address
from rentahal import outbound
from rentahal.errors import Invalid

NO_NETWORKS = override_settings(RENTAHAL_OUTBOUND_ALLOWED_NETWORKS=[])
EVERY_NETWORK = override_settings(RENTAHAL_OUTBOUND_ALLOWED_NETWORKS=["0.0.0.0/0", "::/0"])
METADATA = "http://169.254.169.254/latest/meta-data/"

# Each address, and what the refusal says about it. Loopback and private ranges are refused
# here because no network is allowed; metadata and link-local ones are refused always.
REFUSED = [
    ("http://169.254.169.254/", "cloud metadata"),
    ("169.254.169.254:80", "cloud metadata"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://100.100.100.200/", "cloud metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
    ("http://metadata.google.internal./", "cloud metadata"),
    ("http://169.254.1.1:8000", "link-local"),
    ("http://[fe80::1]:8000", "link-local"),
    ("http://[fe80::1%25eth0]:8000", "zone id"),
    ("127.0.0.1:8000", "127.0.0.1 is a loopback address"),
    ("127.0.0.1:6379", "127.0.0.1 is a loopback address"),
    ("http://localhost:8000", "localhost resolves to a refused address: 127.0.0.1 is a loopback"),
    ("http://LOCALHOST.:8000", "loopback"),
    ("http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ:8000", "loopback"),
    ("http://１２７.０.０.１:8000", "127.0.0.1 is a loopback address"),
    ("http://127.0.0.1.:8000", "127.0.0.1 is a loopback address"),
    ("http://[::1]:8000", "::1 is a loopback address"),
    ("http://2130706433:8000", "2130706433 is 127.0.0.1 spelled another way"),
    ("http://0x7f000001:8000", "0x7f000001 is 127.0.0.1 spelled another way"),
    ("http://0177.0.0.1:8000", "0177.0.0.1 is 127.0.0.1 spelled another way"),
    ("http://127.1:8000", "127.1 is 127.0.0.1 spelled another way"),
    ("http://127.000.000.001:8000", "is 127.0.0.1 spelled another way"),
    ("http://0xa9.0xfe.0xa9.0xfe/", "169.254.169.254 is a cloud metadata address"),
    ("http://[::ffff:127.0.0.1]:8000", "reaches 127.0.0.1"),
    ("http://[::ffff:7f00:1]:8000", "reaches 127.0.0.1"),
    ("http://[::ffff:169.254.169.254]/", "reaches 169.254.169.254: 169.254.169.254 is a cloud metadata address"),
    ("http://[::127.0.0.1]:8000", "reaches 127.0.0.1"),
    ("http://[64:ff9b::127.0.0.1]:8000", "reaches 127.0.0.1"),
    ("http://[2002:7f00:1::]:8000", "reaches 127.0.0.1"),
    ("10.0.0.5:8000", "10.0.0.5 is a private address"),
    ("172.16.0.1:8000", "172.16.0.1 is a private address"),
    ("192.168.1.10:11434", "192.168.1.10 is a private address"),
    ("http://[fc00::1]:8000", "fc00::1 is a private address"),
    ("http://[fd12:3456::1]:8000", "is a private address"),
    ("100.64.0.1:8000", "100.64.0.1 is a shared (CGNAT) address"),
    ("0.0.0.0:8000", "0.0.0.0 is an unspecified address"),
    ("http://0:8000", "0.0.0.0 is an unspecified address"),
    ("http://[::]:8000", ":: is an unspecified address"),
    ("0.1.2.3:8000", '"this network" address'),
    ("224.0.0.1:8000", "multicast"),
    ("http://[ff02::1]:8000", "multicast"),
    ("255.255.255.255:8000", "broadcast"),
    ("240.0.0.1:8000", "reserved"),
    ("file:///etc/passwd", "only http and https addresses are allowed, not file"),
    ("gopher://127.0.0.1:6379/_INFO", "not gopher"),
    ("redis://127.0.0.1:6379/0", "not redis"),
    ("ftp://203.0.113.7/", "not ftp"),
    ("http://admin:secret@8.8.8.8/", "user name or password"),
    ("http://admin@8.8.8.8/", "user name or password"),
    ("http://8.8.8.8/?next=http://127.0.0.1", "query or fragment"),
    ("http://8.8.8.8/#x", "query or fragment"),
    ("http://exa mple:8000", "not a valid host name"),
    ("http://8.8.8.8:99999", "not a valid URL"),
    ("http://:8000", "host is required"),
]


@NO_NETWORKS
@pytest.mark.parametrize(("address", "reason"), REFUSED, ids=[address for address, _ in REFUSED])
def test_the_validator_refuses_every_forbidden_address_and_says_why(address, reason):
    with pytest.raises(ValidationError) as refusal:
        validate_worker_address(address)

    assert refusal.value.code == "forbidden_address"
    assert reason in refusal.value.messages[0]


@NO_NETWORKS
@pytest.mark.parametrize(
    "address", ["8.8.8.8:11434", "https://93.184.215.14/v1", "http://[2606:4700:4700::1111]:8000", "http://[::ffff:8.8.8.8]/"]
)
def test_the_validator_accepts_public_addresses(address):
    validate_worker_address(address)


@pytest.mark.parametrize("address", ["127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "http://[::ffff:127.0.0.1]:8000"])
def test_loopback_is_accepted_once_an_operator_allows_its_network(address):
    with override_settings(RENTAHAL_OUTBOUND_ALLOWED_NETWORKS=["127.0.0.0/8", "::1/128"]):
        validate_worker_address(address)


def test_a_lan_model_server_is_accepted_once_its_network_is_allowed():
    with override_settings(RENTAHAL_OUTBOUND_ALLOWED_NETWORKS=["192.168.1.0/24"]):
        validate_worker_address("192.168.1.10:11434")
        with pytest.raises(ValidationError):
            validate_worker_address("192.168.2.10:11434")


@EVERY_NETWORK
@pytest.mark.parametrize(
    "address",
    [METADATA, "http://100.100.100.200/", "http://[fd00:ec2::254]/", "http://169.254.1.1/", "http://[fe80::1]/",
     "http://metadata.google.internal/", "0.0.0.0:8000", "224.0.0.1:80"],
)
def test_metadata_link_local_and_unspecified_addresses_are_refused_whatever_the_operator_allows(address):
    with pytest.raises(ValidationError) as refusal:
        validate_worker_address(address)

    assert refusal.value.code == "forbidden_address"


# One test per door: each refuses through the same validator, with the same code.

@NO_NETWORKS
@pytest.mark.django_db
def test_the_pools_api_refuses_a_forbidden_address_with_forbidden_address(admin_client):
    response = admin_client.post(
        "/api/pools/workers/", {"name": "sneaky", "address": METADATA, "query_type": "chat"}, content_type="application/json"
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "forbidden_address"
    assert "169.254.169.254 is a cloud metadata address" in error["fields"]["address"][0]
    assert not Worker.objects.filter(name="sneaky").exists()


@NO_NETWORKS
@pytest.mark.django_db(transaction=True)
async def test_a_sysops_add_worker_frame_with_a_forbidden_address_gets_forbidden_address(sysop, connect):
    tab = await connect(sysop.guid)

    await tab.send({"type": "add_worker", "worker": {"name": "sneaky", "address": "0x7f000001:6379", "type": "chat"}})
    error = await tab.receive()

    assert error["type"] == "error"
    assert error["code"] == "forbidden_address"
    assert "127.0.0.1 spelled another way" in error["fields"]["address"][0]
    assert not await sync_to_async(Worker.objects.filter(name="sneaky").exists)()


@NO_NETWORKS
@pytest.mark.django_db
def test_the_admin_refuses_a_forbidden_address_on_the_form(admin_client):
    form = {
        "name": "sneaky", "address": "http://[::ffff:169.254.169.254]/", "query_type": "chat", "wire_format": "predict",
        "model": "", "api_key": "", "realm": "", "max_concurrency": "0",
        "specializations-TOTAL_FORMS": "0", "specializations-INITIAL_FORMS": "0",
        "specializations-MIN_NUM_FORMS": "0", "specializations-MAX_NUM_FORMS": "1000",
    }

    response = admin_client.post("/admin/pools/worker/add/", form)

    assert response.status_code == 200
    assert "169.254.169.254 is a cloud metadata address" in response.content.decode()
    assert not Worker.objects.filter(name="sneaky").exists()


@NO_NETWORKS
@pytest.mark.django_db
def test_a_command_registering_a_forbidden_address_gets_forbidden_address():
    with pytest.raises(Invalid) as refusal:
        actions.add_worker(name="sneaky", address="gopher://127.0.0.1:6379/_FLUSHALL", query_type="chat")

    assert refusal.value.code == "forbidden_address"
    assert list(refusal.value.fields) == ["address"]
    assert not Worker.objects.filter(name="sneaky").exists()


def test_a_malformed_allowed_network_stops_the_broker_at_its_system_check():
    with override_settings(RENTAHAL_OUTBOUND_ALLOWED_NETWORKS=["127.0.0.0/8", "the office"]):
        errors = outbound.check_allowed_networks(None)

    assert [error.id for error in errors] == ["rentahal.E020"]
    assert "'the office' is not a network" in errors[0].msg

"""Every write to API keys: making one (its secret returned once), revoking one, and
finding the key a request names. Users manage their own keys over /ws; operators manage
anyone's through the admin or `manage.py api_keys`.
"""
import hashlib
import logging
import re
import secrets
from decimal import Decimal, InvalidOperation

from django.db import transaction
from django.utils import timezone

from accounts.actions.users import find_user
from accounts.models import ApiKey, User
from rentahal.actors import describe_actor
from rentahal.errors import BrokerError, Forbidden, Invalid, NotFound

logger = logging.getLogger(__name__)

KEY_PREFIX = "rh-"
# 32 random bytes, URL-safe base64: 43 characters after the prefix.
SECRET_PATTERN = re.compile(r"^rh-[A-Za-z0-9_-]{43}$")
SHOWN_PREFIX_CHARS = 10
MAX_KEYS_PER_USER = 50


class InvalidApiKey(BrokerError):
    """A request without a usable key: missing, malformed, unknown or revoked."""

    code = "invalid_api_key"
    http_status = 401


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_limits(limits: dict) -> dict:
    """Return the key's limits from a frame, form or command, refusing any that make no sense."""
    fields: dict[str, list[str]] = {}
    parsed: dict = {}
    for name in ("requests_per_minute", "max_in_flight"):
        value = limits.get(name, 0)
        if value is None:
            value = 0
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1_000_000:
            fields[name] = ["A whole number from 0 (no limit) to 1000000."]
        else:
            parsed[name] = value
    for name in ("daily_budget", "total_budget"):
        value = limits.get(name)
        if value is None or value == "":
            parsed[name] = None
            continue
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            amount = None
        if isinstance(value, bool) or amount is None or not amount.is_finite() or amount < 0 or amount >= 10**8:
            fields[name] = ["An amount of 0 or more, or blank for no limit."]
        else:
            parsed[name] = amount.quantize(Decimal("0.000001"))
    allowed = limits.get("allowed_models") or []
    if not isinstance(allowed, list) or not all(isinstance(item, str) and 0 < len(item) <= 256 for item in allowed):
        fields["allowed_models"] = ["A list of aliases, worker names or model names."]
    else:
        parsed["allowed_models"] = sorted(set(allowed))
    name = limits.get("name", "")
    if not isinstance(name, str) or len(name) > 64 or "\x00" in name:
        fields["name"] = ["At most 64 characters."]
    else:
        parsed["name"] = name.strip()
    if fields:
        raise Invalid(fields=fields)
    return parsed


def create_key(guid: str, *, acting_user, **limits) -> tuple[ApiKey, str]:
    """Make a key for the user and return it with its secret, which is never shown again.

    A user makes keys for themselves; an operator (staff or the system) for anyone.
    """
    user = find_user(guid)
    if isinstance(acting_user, User) and acting_user.pk != user.pk:
        raise Forbidden("You may only make keys for yourself.")
    values = parse_limits(limits)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic(using="default", durable=True):
        # Lock the user's keys so two concurrent creates cannot both pass the count.
        held = list(ApiKey.objects.using("default").select_for_update().filter(user_guid=user.pk, revoked_at=None))
        if len(held) >= MAX_KEYS_PER_USER:
            raise BrokerError(f"A user may hold at most {MAX_KEYS_PER_USER} keys; revoke one first.", code="too_many_keys")
        key = ApiKey.objects.using("default").create(
            user_guid=user.pk, prefix=secret[:SHOWN_PREFIX_CHARS], hashed=hash_secret(secret), **values
        )
    logger.info("API key %s made for %s by %s", key.pk, user.pk, describe_actor(acting_user))
    return key, secret


def list_keys(guid: str) -> list[ApiKey]:
    return list(ApiKey.objects.using("default").filter(user_guid=guid))


def revoke_key(key_id: int, *, acting_user) -> ApiKey:
    """Revoke a key at once: the next request that names it is refused. Revoking twice is harmless."""
    with transaction.atomic(using="default", durable=True):
        key = ApiKey.objects.using("default").select_for_update().filter(pk=key_id).first()
        if key is None or (isinstance(acting_user, User) and key.user_guid != acting_user.pk):
            # Someone else's key is "not found", so ids cannot be probed.
            raise NotFound(f"No API key {key_id} of yours.")
        if key.revoked_at is None:
            key.revoked_at = timezone.now()
            key.save(update_fields=["revoked_at"])
    logger.info("API key %s revoked by %s", key.pk, describe_actor(acting_user))
    return key


def authenticate_key(secret: str | None) -> ApiKey:
    """Return the live key whose secret this is, or refuse with `InvalidApiKey`."""
    if not secret:
        raise InvalidApiKey("No API key: send 'Authorization: Bearer rh-...'.")
    if not SECRET_PATTERN.match(secret):
        raise InvalidApiKey("Malformed API key: a key is 'rh-' and 43 characters.")
    key = ApiKey.objects.using("default").filter(hashed=hash_secret(secret)).first()
    if key is None:
        raise InvalidApiKey("Unknown API key.")
    if key.is_revoked:
        raise InvalidApiKey("This API key was revoked.")
    return key

"""Every write to users: creation (the first visitor is sysop only with FIRST_VISITOR_IS_SYSOP),
making a sysop (by an operator, or by a one-time claim token), nicknames and bans; the actor of a ban or of a new sysop is the keyword-only
`acting_user` of `rentahal.actors`.

Each write runs inside `rentahal.sharding.writing_for`, which resolves the user's shard
under the prefix's fence, so a shard move never loses a write or lets one land on the old
shard.
"""
import datetime
import hashlib
import logging
import secrets
import uuid

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import FoundingUser, SysopClaim, User
from rentahal.actors import describe_actor
from rentahal.errors import BrokerError, Forbidden, NotFound
from rentahal.pushes import frame_event, send_event_on_commit, user_group
from rentahal.sharding import serialised_across_shards, shard_aliases, shard_for_guid, writing_for

logger = logging.getLogger(__name__)


def default_nickname(guid: str) -> str:
    return f"user_{guid[:8]}"


# The cookie a browser keeps its user's guid in (the classic client's name for it).
GUID_COOKIE = "user_guid"


def normalise_guid(raw: str | None) -> str | None:
    """Return the cookie's guid in canonical form, or None if it is not a uuid."""
    try:
        return str(uuid.UUID(str(raw)))
    except (ValueError, TypeError, AttributeError):
        return None


def get_or_create_user(guid: str) -> User:
    """Return the user with this guid, creating it.

    With FIRST_VISITOR_IS_SYSOP (the local run's classic behaviour) the first user of the
    system becomes sysop; otherwise nobody does by arriving, and an operator names the
    sysop with `manage.py make_sysop`: on a public deployment the first visitor may be anyone.
    """
    alias = shard_for_guid(guid)
    user = User.objects.using(alias).filter(pk=guid).first()
    if user is not None:
        return user
    is_first = False
    if settings.RENTAHAL_FIRST_VISITOR_IS_SYSOP:
        # The FoundingUser row is the race-free answer to "is this the first user?": only one
        # insert of its fixed primary key can succeed.
        with transaction.atomic(using="default"):
            _, is_first = FoundingUser.objects.using("default").get_or_create(pk=1, defaults={"guid": guid})
    try:
        with writing_for(guid) as alias:
            # Checked again under the fence: the read above may have used a map that a
            # shard move has since switched.
            user = User.objects.using(alias).filter(pk=guid).first()
            if user is None:
                user = User.objects.using(alias).create(guid=guid, nickname=default_nickname(guid), is_sysop=is_first)
    except IntegrityError:
        # Two tabs of a new user connected at once; the other created the row.
        user = User.objects.using(shard_for_guid(guid)).get(pk=guid)
    if is_first:
        logger.info("first user %s is sysop", guid)
    return user


def find_user(guid: str) -> User:
    normalised = normalise_guid(guid)
    user = User.objects.using(shard_for_guid(normalised)).filter(pk=normalised).first() if normalised else None
    if user is None:
        raise NotFound(f"No user with guid {guid}.")
    return user


def find_user_by_guid_or_nickname(name: str) -> User:
    """Return the user whose guid, else whose nickname, is `name` (nicknames are unique across shards)."""
    try:
        return find_user(name)
    except NotFound:
        pass
    for alias in shard_aliases():
        user = User.objects.using(alias).filter(nickname=name).first()
        if user is not None and shard_for_guid(user.guid) == alias:
            return user
    raise NotFound(f"No user with guid or nickname '{name[:64]}'.", code="unknown_user")


def set_sysop(guid: str, is_sysop: bool, *, acting_user) -> User:
    """Make a user sysop, or take it away; once committed, their open sockets re-read them.

    The operator's way to name a fresh deployment's first sysop (`manage.py make_sysop`),
    where nobody becomes sysop by arriving first.
    """
    user = find_user(guid)
    with writing_for(user.guid) as alias:
        User.objects.using(alias).filter(pk=user.pk).update(is_sysop=is_sysop)
        send_event_on_commit(user_group(user.guid), {"type": "user.changed"}, using=alias)
    user.is_sysop = is_sysop
    logger.info("user %s %s sysop by %s", user.guid, "made" if is_sysop else "no longer", describe_actor(acting_user))
    return user


def issue_sysop_claim() -> tuple[str, datetime.datetime]:
    """Return a new one-time sysop claim token and when it expires.

    The operator's way to name a fresh deployment's first sysop without knowing their guid
    (`manage.py sysop_claim_token`, `run_broker`): whoever presents it first with
    `claim_sysop` becomes sysop. Only its hash is stored.
    """
    token = secrets.token_urlsafe(32)
    expires_at = timezone.now() + datetime.timedelta(seconds=settings.RENTAHAL_SYSOP_CLAIM_TTL)
    SysopClaim.objects.using("default").create(token_hash=hash_claim_token(token), expires_at=expires_at)
    logger.info("sysop claim token issued, valid until %s", expires_at.isoformat())
    return token, expires_at


def claim_sysop(guid: str, token: str) -> User:
    """Make the user sysop with a claim token, which can then never be used again.

    The token is spent before the user is made sysop (two databases, no common
    transaction): a failure in between leaves a spent token and no new sysop, and the
    operator issues another, rather than a token that could make a second sysop.
    """
    now = timezone.now()
    with transaction.atomic(using="default", durable=True):
        claim = SysopClaim.objects.using("default").select_for_update().filter(token_hash=hash_claim_token(token)).first()
        if claim is None:
            raise Forbidden("That sysop claim token is not one the operator issued.", code="claim_token_unknown")
        if claim.claimed_at is not None:
            raise Forbidden("That sysop claim token has already been used.", code="claim_token_used")
        if claim.expires_at <= now:
            raise Forbidden(
                "That sysop claim token has expired; the operator can issue a new one with "
                "`manage.py sysop_claim_token`.",
                code="claim_token_expired",
            )
        claim.claimed_at = now
        claim.claimed_by = guid
        claim.save(using="default", update_fields=["claimed_at", "claimed_by"])
    logger.info("user %s claimed sysop with a token", guid)
    return set_sysop(guid, True, acting_user=None)


def hash_claim_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def has_sysop() -> bool:
    """Return whether any user on any shard is sysop."""
    return any(User.objects.using(alias).filter(is_sysop=True).exists() for alias in shard_aliases())


def set_nickname(user: User, nickname: str) -> User:
    nickname = (nickname or "").strip()
    if not 1 <= len(nickname) <= 64:
        raise BrokerError("A nickname is 1 to 64 characters.", code="bad_nickname")
    taken = BrokerError("Nickname already taken", code="nickname_taken")
    # Each shard's unique constraint sees only its own users; the lock makes "nobody on any
    # shard has it" and the write one step for everyone asking for this nickname.
    with serialised_across_shards(f"nickname:{nickname}"):
        for alias in shard_aliases():
            if User.objects.using(alias).filter(nickname=nickname).exclude(pk=user.pk).exists():
                raise taken
        try:
            with writing_for(user.guid) as alias:
                User.objects.using(alias).filter(pk=user.pk).update(nickname=nickname)
        except IntegrityError:
            raise taken from None
    user.nickname = nickname
    return user


def set_banned(guid: str, is_banned: bool, *, acting_user) -> User:
    """Ban or unban a user; once committed, a ban closes every open socket of theirs (each
    told `user_banned` first) and an unban sends them `user_unbanned`.

    The one ban action, for the sysop's `ban_user`/`unban_user` frames and the admin's
    actions: who may ban is their check (sysop-only frames, the admin's permissions); the
    rule here is about the target, so a sysop cannot lock themselves out.
    """
    user = find_user(guid)
    if is_banned and isinstance(acting_user, User) and acting_user.pk == user.pk:
        raise BrokerError("A sysop cannot ban themselves.", code="ban_self")
    with writing_for(user.guid) as alias:
        User.objects.using(alias).filter(pk=user.pk).update(is_banned=is_banned)
        if is_banned:
            send_event_on_commit(user_group(user.guid), {"type": "user.banned"}, using=alias)
        else:
            send_event_on_commit(user_group(user.guid), frame_event({"type": "user_unbanned", "guid": user.guid}), using=alias)
    user.is_banned = is_banned
    logger.info("user %s %s by %s", user.guid, "banned" if is_banned else "unbanned", describe_actor(acting_user))
    return user


def list_users(*, limit: int | None = None) -> list[User]:
    """Return every user, gathered from every shard, newest first (for sysop views).

    A user seen on two shards mid-move is listed once, from the shard the map names.
    """
    found: dict[str, User] = {}
    for alias in shard_aliases():
        rows = User.objects.using(alias).order_by("-created_at")
        for user in rows[:limit] if limit else rows:
            if user.pk not in found or shard_for_guid(user.pk) == alias:
                found[user.pk] = user
    users = sorted(found.values(), key=lambda user: user.created_at, reverse=True)
    return users[:limit] if limit else users

"""Every write to users: creation (the first visitor is sysop only with FIRST_VISITOR_IS_SYSOP),
making a sysop, nicknames and bans; the actor of a ban or of a new sysop is the keyword-only
`acting_user` of `rentahal.actors`.

Each write runs inside `rentahal.sharding.writing_for`, which resolves the user's shard
under the prefix's fence, so a shard move never loses a write or lets one land on the old
shard.
"""
import logging
import uuid

from django.conf import settings
from django.db import IntegrityError, transaction

from accounts.models import FoundingUser, User
from rentahal.actors import describe_actor
from rentahal.errors import BrokerError, NotFound
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

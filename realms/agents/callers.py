"""Who is calling through the agents' doors (MCP over HTTP and stdio, the event stream, the
agents' API): the one place such a caller is authenticated.

For now a caller is a staff login holding a DRF token (`manage.py drf_create_token <user>`);
user API keys would be one more branch of `authenticate_token`, returning a Caller whose
`guid` names the broker user, so every tool then keeps that user to their own queries.
"""
from __future__ import annotations

import dataclasses

from rest_framework.authtoken.models import Token

from rentahal.errors import BrokerError, Forbidden

POOL_CHANGE_PERMISSIONS = ("pools.add_poolalias", "pools.change_poolalias", "pools.delete_poolalias")


class NotAuthenticated(BrokerError):
    code = "not_authenticated"
    http_status = 401


@dataclasses.dataclass(frozen=True)
class Caller:
    """An authenticated caller: `user` is the Django login that acts (actions' `acting_user`)."""

    user: object
    guid: str | None = None  # a broker user's guid, for callers that are not staff

    @property
    def is_staff(self) -> bool:
        return bool(self.user is not None and self.user.is_active and self.user.is_staff)

    @property
    def may_change_pools(self) -> bool:
        return self.is_staff and self.user.has_perms(POOL_CHANGE_PERMISSIONS)

    def require_pool_rights(self) -> None:
        """Refuse unless the caller may create, scale and close pools (staff with the pools permissions)."""
        if not self.may_change_pools:
            raise Forbidden("Changing pools needs a staff login with the pools permissions.")

    def search_scope(self, user: str | None) -> str | None:
        """Return whose queries a search may read: anyone's (None) or one user's guid.

        Staff search across users, or one user's when they name one; any other caller only
        ever reads their own."""
        if self.is_staff:
            return user or None
        return self.guid


def bearer_token(authorization: str | None) -> str:
    """Return the token of an `Authorization: Bearer <token>` (or DRF's `Token <token>`) header."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() not in ("bearer", "token") or not token.strip():
        raise NotAuthenticated("Send 'Authorization: Bearer <token>' with a staff token.")
    return token.strip()


def authenticate_token(token: str) -> Caller:
    """Return the caller a token belongs to, or refuse it (unknown, or not active staff)."""
    found = Token.objects.select_related("user").filter(key=token).first()
    if found is None or not found.user.is_active:
        raise NotAuthenticated("Unknown or revoked token.")
    caller = Caller(found.user)
    if not caller.is_staff:
        raise NotAuthenticated("This token is not a staff login's.")
    return caller


def caller_of(user) -> Caller:
    """Return the caller of a request that Django or DRF authenticated (a session login)."""
    caller = Caller(user)
    if not caller.is_staff:
        raise NotAuthenticated("Log in as staff, or send a staff token.")
    return caller

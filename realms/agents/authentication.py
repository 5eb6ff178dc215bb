"""The staff-token door of the APIs (REST_FRAMEWORK's authentication classes); the token is
checked by `realms.agents.callers`. DRF imports this module with its settings, before the project's
modules are ready, so it imports them only when a request arrives."""
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed


class StaffTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <token>` (or DRF's `Token <token>`) of a staff login."""

    def authenticate(self, request):
        from realms.agents.callers import NotAuthenticated, authenticate_token, bearer_token

        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header.lower().startswith(("bearer ", "token ")):
            return None
        try:
            caller = authenticate_token(bearer_token(header))
        except NotAuthenticated as exc:
            raise AuthenticationFailed(exc.message) from None
        return caller.user, caller

    def authenticate_header(self, request):
        return "Bearer"

"""Who may use the realm admin API: Django staff, or a broker sysop known by the guid cookie."""
from rest_framework.permissions import BasePermission

from accounts.actions.users import GUID_COOKIE, find_user
from rentahal.errors import NotFound


def sysop_of(request):
    """Return the broker sysop whose guid cookie came with the request, or None."""
    guid = request.COOKIES.get(GUID_COOKIE)
    if not guid:
        return None
    try:
        user = find_user(guid)
    except NotFound:
        return None
    return user if user.is_sysop else None


def acting_user_of(request):
    """Return who is acting (`rentahal.actors`): the staff login, else the cookie's sysop, else None."""
    user = request.user
    if user is not None and user.is_authenticated and user.is_staff:
        return user
    return sysop_of(request)


class IsSysopOrStaff(BasePermission):
    message = "Only a sysop or a staff member may manage realms."

    def has_permission(self, request, view):
        return acting_user_of(request) is not None

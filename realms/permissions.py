"""Who may use the realm admin API: Django staff, or a broker sysop known by the user_guid cookie."""
from rest_framework.permissions import BasePermission

from accounts.actions.users import find_user
from rentahal.errors import NotFound

COOKIE_NAME = "user_guid"


def is_sysop_cookie(request) -> bool:
    guid = request.COOKIES.get(COOKIE_NAME)
    if not guid:
        return False
    try:
        return find_user(guid).is_sysop
    except NotFound:
        return False


class IsSysopOrStaff(BasePermission):
    message = "Only a sysop or a staff member may manage realms."

    def has_permission(self, request, view):
        user = request.user
        if user is not None and user.is_authenticated and user.is_staff:
            return True
        return is_sysop_cookie(request)

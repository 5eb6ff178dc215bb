"""Who may use the realm admin API: staff with the Realm model's permissions
(rentahal.permissions.StaffModelPermissions) for everything, and a broker sysop known only
by the guid cookie for reads.

The cookie is a bare bearer value that a browser attaches to any site's request, so it never
authorises a write over HTTP: a sysop writes realms through a staff login (whose session
writes need a CSRF token) or acts over /ws, whose handshake checks the Origin
(rentahal.origins).
"""
from rest_framework.permissions import SAFE_METHODS

from accounts.actions.users import GUID_COOKIE, find_user
from rentahal.errors import NotFound
from rentahal.permissions import StaffModelPermissions


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


class StaffOrSysopReading(StaffModelPermissions):
    message = "Only staff with realm permissions may change realms; a sysop's cookie may only read them."

    def has_permission(self, request, view):
        if super().has_permission(request, view):
            return True
        return request.method in SAFE_METHODS and sysop_of(request) is not None

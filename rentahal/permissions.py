"""Who may use the staff APIs: Django staff whose model permissions cover what they ask.

The one rule for /api/pools/ and /api/realms/ (the REST_FRAMEWORK default in
rentahal/settings.py): a read needs the model's `view` permission, a write its `add`,
`change` or `delete`, as the admin asks of the same login. Every API view names the model
it serves (`queryset`), which is what the permissions are looked up on.
"""
from rest_framework.permissions import DjangoModelPermissions


class StaffModelPermissions(DjangoModelPermissions):
    """Allow active staff whose Django permissions cover the request's method on the view's model."""

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }

    def has_permission(self, request, view):
        user = request.user
        return bool(user and user.is_active and user.is_staff) and super().has_permission(request, view)

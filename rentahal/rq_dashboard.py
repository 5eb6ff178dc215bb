"""django-rq's dashboard (queues, jobs, workers; requeue, delete, empty) behind its own
permission: a superuser, or active staff granted `django_rq.admin` ("Access admin page").

django-rq 4.2 declares that permission but its views only ask for staff, both at
/admin/rq/ and in the admin (/admin/django_rq/dashboard/); every one of its views is
wrapped here, in both places, so a staff login with no permissions sees none of it.
"""
import functools

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.urls import URLPattern
from django_rq import urls as rq_urls
from django_rq.admin import QueueAdmin
from django_rq.models import Dashboard

DASHBOARD_PERMISSION = "django_rq.admin"


def may_use_rq_dashboard(user) -> bool:
    return bool(user.is_active and user.is_staff and user.has_perm(DASHBOARD_PERMISSION))


def requiring_dashboard_permission(view):
    """Wrap a dashboard view: a visitor not logged in goes to the admin login, a login
    without the permission gets 403."""

    @functools.wraps(view)
    def guarded(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), "admin:login")
        if not may_use_rq_dashboard(request.user):
            raise PermissionDenied("The RQ dashboard needs the django_rq.admin permission.")
        return view(request, *args, **kwargs)

    return guarded


def guard(patterns: list) -> list:
    """Return the URL patterns with every view wrapped in `requiring_dashboard_permission`."""
    for pattern in patterns:
        if isinstance(pattern, URLPattern):
            pattern.callback = requiring_dashboard_permission(pattern.callback)
    return patterns


class GuardedDashboardAdmin(QueueAdmin):
    """django-rq's admin entry, listed and served only to those who may use the dashboard."""

    def has_module_permission(self, request):
        return may_use_rq_dashboard(request.user)

    def has_view_permission(self, request, obj=None):
        return may_use_rq_dashboard(request.user)

    def has_change_permission(self, request, obj=None):
        return may_use_rq_dashboard(request.user)

    def get_urls(self):
        return guard(super().get_urls())


def guard_admin_entry(site: admin.AdminSite) -> None:
    """Replace django-rq's own admin entry (registered when RQ_SHOW_ADMIN_LINK is on) with the guarded one."""
    if site.is_registered(Dashboard):
        site.unregister(Dashboard)
        site.register(Dashboard, GuardedDashboardAdmin)


app_name = "django_rq"
urlpatterns = guard(rq_urls.get_api_urlpatterns() + rq_urls.get_admin_urlpatterns())

"""Operators' admin for realms, their ordered backups and the scaling advice recorded for them.
Saves and deletes of realms go through `realms.actions`."""
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path

from accounts.admin import UserAdmin
from accounts.models import User
from realms import actions, failed, lifecycle
from realms.models import Realm, RealmBackup, ScalingAdvice
from rentahal.admin import ActionModelAdmin
from rentahal.errors import BrokerError
from rentahal.query_types import QueryType


class RealmBackupInline(admin.TabularInline):
    model = RealmBackup
    fk_name = "realm"
    fields = ["query_type", "backup", "position"]
    extra = 0


@admin.register(Realm)
class RealmAdmin(ActionModelAdmin):
    list_display = ["name", "query_type", "min_workers", "max_workers", "queue_limit", "created_at"]
    list_filter = ["query_type"]
    search_fields = ["name"]
    inlines = [RealmBackupInline]
    change_list_template = "admin/realms/realm/change_list.html"

    def get_urls(self):
        """Add the live dashboard (`dashboard/`, fed over /ws/dashboard), the failed queries
        (`failed/`) and a broadcast to the users (`broadcast/`)."""
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="realms_realm_dashboard"),
            path("failed/", self.admin_site.admin_view(self.failed_view), name="realms_realm_failed"),
            path("broadcast/", self.admin_site.admin_view(self.broadcast_view), name="realms_realm_broadcast"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {**self.admin_site.each_context(request), "title": "Live dashboard", "opts": self.model._meta}
        return TemplateResponse(request, "admin/realms/dashboard.html", context)

    def broadcast_view(self, request):
        """Send a `sysop_message` to every user, or to one realm's, as a sysop's frame does."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        if request.method == "POST" and request.POST.get("message", "").strip():
            try:
                actions.broadcast_message(
                    request.POST["message"].strip(), realm=request.POST.get("realm", ""), acting_user=request.user
                )
                self.message_user(request, "Message sent.")
            except BrokerError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
        context = {
            **self.admin_site.each_context(request), "title": "Broadcast to users", "opts": self.model._meta,
            "realms": Realm.objects.order_by("name"),
        }
        return TemplateResponse(request, "admin/realms/broadcast.html", context)

    def failed_view(self, request):
        """List RQ's failed jobs with their queries; a POST retries or discards the chosen ones."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            if not self.has_change_permission(request):
                raise PermissionDenied
            act = failed.retry_failed_query if request.POST.get("do") == "retry" else failed.discard_failed_job
            done = 0
            for chosen in request.POST.getlist("job"):
                queue_name, _, job_id = chosen.partition("|")
                try:
                    act(job_id, queue_name, acting_user=request.user)
                    done += 1
                except BrokerError as exc:
                    self.message_user(request, exc.message, messages.ERROR)
            verb = "retried" if request.POST.get("do") == "retry" else "discarded"
            self.message_user(request, f"{done} failed quer{'y' if done == 1 else 'ies'} {verb}.")
            return HttpResponseRedirect(request.get_full_path())
        context = {
            **self.admin_site.each_context(request), "title": "Failed queries", "opts": self.model._meta,
            "failed": failed.failed_queries(), "can_act": self.has_change_permission(request),
        }
        return TemplateResponse(request, "admin/realms/failed.html", context)

    def get_readonly_fields(self, request, obj=None):
        """A realm keeps its name: its queue and its queries' records carry it."""
        return ["name"] if obj is not None else []

    def save_with_action(self, request, form, formsets, change):
        realm = form.instance
        steps = next((formset for formset in formsets if formset.model is RealmBackup), None)
        backups = None
        if steps is not None:
            # Every type is given, so a type whose last row was deleted loses its backups.
            backups = {query_type: [] for query_type in QueryType.values}
            for row in sorted(self.kept_rows(steps), key=lambda row: row["position"]):
                backups[row["query_type"]].append(row["backup"])
        if change:
            fields = {field: getattr(realm, field) for field in form.changed_data if field in actions.REALM_FIELDS}
            actions.update_realm(realm, backups=backups, acting_user=request.user, **fields)
            return
        fields = {field: getattr(realm, field) for field in actions.REALM_FIELDS}
        created = actions.create_realm(backups=backups, acting_user=request.user, **fields)
        realm.pk = created.pk  # the admin logs and redirects to the object it built

    def delete_model(self, request, realm):
        actions.delete_realm(realm, acting_user=request.user)

    def has_delete_permission(self, request, obj=None):
        """A realm that is primary for a query type is never deleted (its type would have no realm)."""
        if obj is not None and obj.query_type:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request):
        """Drop bulk delete: it would skip the per-realm rule above."""
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


@admin.register(ScalingAdvice)
class ScalingAdviceAdmin(admin.ModelAdmin):
    list_display = ["created_at", "realm", "action", "reason", "workers", "utilisation", "error_rate", "queries"]
    list_filter = ["action", "realm"]
    readonly_fields = [field.name for field in ScalingAdvice._meta.fields]

    def has_add_permission(self, request):
        return False


admin.site.unregister(User)


@admin.register(User)
class UserWithQueriesAdmin(UserAdmin):
    """The accounts admin of users, with terminating a user's queries, which belongs to the
    query lifecycle (`realms.lifecycle.terminate_queries`) that accounts may not import."""

    actions = [*UserAdmin.actions, "terminate_queries"]

    @admin.action(description="Terminate the selected users' unfinished queries", permissions=["view"])
    def terminate_queries(self, request, queryset):
        ended = sum(lifecycle.terminate_queries(user.guid, acting_user=request.user) for user in queryset)
        self.message_user(request, f"Terminated {ended} quer{'y' if ended == 1 else 'ies'}.")

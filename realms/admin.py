"""Operators' admin for realms, their ordered backups and the scaling advice recorded for them."""
from django.contrib import admin

from realms.models import Realm, RealmBackup, ScalingAdvice


class RealmBackupInline(admin.TabularInline):
    model = RealmBackup
    fk_name = "realm"
    fields = ["query_type", "backup", "position"]
    extra = 0


@admin.register(Realm)
class RealmAdmin(admin.ModelAdmin):
    list_display = ["name", "query_type", "min_workers", "max_workers", "queue_limit", "created_at"]
    list_filter = ["query_type"]
    search_fields = ["name"]
    inlines = [RealmBackupInline]

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

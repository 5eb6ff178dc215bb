"""The operators' view of users, queries and the ledger, one shard at a time.

A changelist cannot span databases, so each list shows one shard, chosen with the
"shard" filter. The ledger and queries are records: the admin reads them and never edits
them; bans go through `accounts.actions.users.set_banned`, the one ban action (the sysop's
frame calls it too), so they respect a shard move's write fence and close the user's sockets.
"""
from urllib.parse import parse_qs

from django.contrib import admin, messages

from accounts import limits
from accounts.actions.keys import create_key, revoke_key
from accounts.actions.users import set_banned
from accounts.models import ApiKey, Charge, Query, User
from rentahal.admin import ActionModelAdmin
from rentahal.errors import STORE_OUTAGES
from rentahal.sharding import shard_aliases


class ShardFilter(admin.SimpleListFilter):
    title = "shard"
    parameter_name = "shard"

    def lookups(self, request, model_admin):
        return [(alias, alias) for alias in shard_aliases()]

    def queryset(self, request, queryset):
        return queryset  # ShardedAdmin.get_queryset has already picked the database.

    def value(self):
        return super().value() or shard_aliases()[0]


def requested_shard(request) -> str | None:
    """Return the shard named by the list's filter, also on pages reached from the list."""
    shard = request.GET.get("shard") or parse_qs(request.GET.get("_changelist_filters", "")).get("shard", [None])[0]
    return shard if shard in shard_aliases() else None


class ShardedAdmin(admin.ModelAdmin):
    list_filter = [ShardFilter]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        shard = requested_shard(request)
        if shard is None and request.resolver_match.url_name.endswith("_changelist"):
            shard = shard_aliases()[0]
        # Without a shard the router routes by the primary key (a guid or a query id).
        return queryset.using(shard) if shard else queryset

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(User)
class UserAdmin(ShardedAdmin):
    list_display = ["nickname", "guid", "is_sysop", "is_banned", "query_count", "total_cost", "total_query_time", "created_at"]
    list_filter = [ShardFilter, "is_sysop", "is_banned"]
    search_fields = ["nickname", "=guid"]
    readonly_fields = list_display
    actions = ["ban_users", "unban_users"]

    @admin.action(description="Ban selected users", permissions=["view"])
    def ban_users(self, request, queryset):
        self.change_bans(request, queryset, True)

    @admin.action(description="Unban selected users", permissions=["view"])
    def unban_users(self, request, queryset):
        self.change_bans(request, queryset, False)

    def change_bans(self, request, queryset, is_banned: bool) -> None:
        users = list(queryset)
        for user in users:
            set_banned(user.guid, is_banned, acting_user=request.user)
        self.message_user(request, f"{len(users)} user(s) {'banned' if is_banned else 'unbanned'}.")


@admin.register(Query)
class QueryAdmin(ShardedAdmin):
    list_display = ["id", "user", "query_type", "realm", "status", "worker", "processing_time", "cost", "api_key", "accepted_at"]
    list_filter = [ShardFilter, "status", "query_type", "realm"]
    search_fields = ["=id", "=user__guid", "prompt", "=api_key"]
    list_select_related = ["user"]
    date_hierarchy = "accepted_at"


@admin.register(Charge)
class ChargeAdmin(ShardedAdmin):
    list_display = ["query_id", "user", "amount", "processing_time", "created_at"]
    search_fields = ["=query__id", "=user__guid"]
    list_select_related = ["user"]


@admin.register(ApiKey)
class ApiKeyAdmin(ActionModelAdmin):
    """Operators make and revoke any user's keys here (users do it over /ws); the secret of
    a new key is shown once, in the message after saving. Keys are never edited: revoke and
    make another."""

    list_display = [
        "prefix", "name", "user_guid", "created_at", "revoked_at", "requests_per_minute", "max_in_flight",
        "daily_budget", "total_budget", "spend",
    ]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["=user_guid", "prefix", "name"]
    fields = ["user_guid", "name", "requests_per_minute", "max_in_flight", "allowed_models", "daily_budget", "total_budget"]
    actions = ["revoke_keys"]

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    def save_with_action(self, request, form, formsets, change) -> None:
        data = form.cleaned_data
        key, secret = create_key(
            data["user_guid"],
            acting_user=request.user,
            **{field: data[field] for field in self.fields if field != "user_guid"},
        )
        form.instance = key
        self.message_user(request, f"Key {key.prefix}… made. Its secret, shown only now: {secret}", messages.WARNING)

    @admin.display(description="spent today / in total")
    def spend(self, key):
        """Read from Redis, where the limits count it (accounts.limits)."""
        try:
            today, overall = limits.spent(key.pk)
        except STORE_OUTAGES:
            return "Redis unavailable"
        return f"{today:.6f} / {overall:.6f}"

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        keys = list(queryset)
        for key in keys:
            revoke_key(key.pk, acting_user=request.user)
        self.message_user(request, f"{len(keys)} key(s) revoked.")

"""The operators' view of users, queries and the ledger, one shard at a time.

A changelist cannot span databases, so each list shows one shard, chosen with the
"shard" filter. The ledger and queries are records: the admin reads them and never edits
them; bans go through `accounts.actions.users.set_banned`, the one ban action (the sysop's
frame calls it too), so they respect a shard move's write fence and close the user's sockets.
"""
import uuid
from urllib.parse import parse_qs, urlencode

from django.contrib import admin, messages
from django.contrib.admin.views.main import SEARCH_VAR
from django.urls import reverse
from django.utils.html import format_html

from accounts import limits
from accounts.actions.keys import create_key, revoke_key
from accounts.actions.users import set_banned
from accounts.models import ApiKey, Charge, Query, User
from rentahal.admin import ActionModelAdmin
from rentahal.errors import STORE_OUTAGES
from rentahal.sharding import guid_prefix, is_valid_prefix, shard_aliases, shard_for_guid


class ShardFilter(admin.SimpleListFilter):
    title = "shard"
    parameter_name = "shard"

    def __init__(self, request, params, model, model_admin):
        self.request = request
        super().__init__(request, params, model, model_admin)

    def lookups(self, request, model_admin):
        return [(alias, alias) for alias in shard_aliases()]

    def queryset(self, request, queryset):
        return queryset  # ShardedAdmin.get_queryset has already picked the database.

    def value(self):
        return shown_shard(self.request)


def requested_shard(request) -> str | None:
    """Return the shard named by the list's filter, also on pages reached from the list."""
    shard = request.GET.get("shard") or parse_qs(request.GET.get("_changelist_filters", "")).get("shard", [None])[0]
    return shard if shard in shard_aliases() else None


def shown_shard(request) -> str:
    """Return the shard a list shows: the one its filter names; else, when the search is a
    user's guid or a query's id, the shard that holds it; else the first."""
    shard = requested_shard(request)
    if shard is not None:
        return shard
    term = request.GET.get(SEARCH_VAR, "").strip()
    return shard_for_guid(term) if is_shard_key(term) else shard_aliases()[0]


def is_shard_key(term: str) -> bool:
    """Return whether the term is a guid or a query id: its first byte names a user's shard."""
    try:
        uuid.UUID(term)
    except ValueError:
        return False
    return is_valid_prefix(guid_prefix(term))


def is_changelist(request) -> bool:
    return request.resolver_match.url_name.endswith("_changelist")


class ShardedAdmin(admin.ModelAdmin):
    """A read-only list of one shard's rows; a row's page is read from the same shard."""

    list_filter = [ShardFilter]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        shard = shown_shard(request) if is_changelist(request) else requested_shard(request)
        # Without a shard the router routes by the primary key (a guid or a query id).
        return queryset.using(shard) if shard else queryset

    def get_preserved_filters(self, request):
        """Name the shown shard in the links a list makes, so each row opens from its own
        shard: a charge's id is only unique within its database."""
        if not (self.preserve_filters and is_changelist(request)):
            return super().get_preserved_filters(request)
        params = request.GET.copy()
        params["shard"] = shown_shard(request)
        return urlencode({"_changelist_filters": params.urlencode()})

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def excerpt(text: str, length: int = 80) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def base64_size(payload: str) -> str:
    return f"{len(payload) * 3 // 4 / 1024:.0f} KiB"


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
    """Queries as operators look into them: who asked what, where it ran, how it ended and
    what it cost. A row's page leaves out the image and audio sent (base64, up to megabytes)
    and names their size."""

    list_display = [
        "id", "user", "query_type", "realm", "status", "asked", "outcome", "worker", "attempts", "processing_time",
        "cost", "api_key", "accepted_at",
    ]
    list_filter = [
        ShardFilter, "status", "query_type", "realm", "model_type", ("api_key", admin.EmptyFieldListFilter),
    ]
    search_fields = [
        "=id", "=user__guid", "=user__nickname", "prompt", "=worker", "=idempotency_key", "=conversation_id", "=api_key",
    ]
    list_select_related = ["user"]
    date_hierarchy = "accepted_at"
    fields = readonly_fields = [
        "id", "user", "query_type", "model_type", "model_name", "speech_task", "realm", "status", "prompt", "sent",
        "answer", "result_type", "error", "worker", "attempts", "accepted_at", "started_at", "finished_at",
        "processing_time", "cost", "charge", "usage", "options", "idempotency_key", "conversation_id", "api_key",
    ]

    @admin.display(description="prompt")
    def asked(self, query):
        return excerpt(query.prompt)

    @admin.display(description="answer or reason")
    def outcome(self, query):
        if query.status == Query.Status.FAILED:
            return excerpt(query.error)
        return self.answer(query) if query.status == Query.Status.DONE else ""

    @admin.display(description="result")
    def answer(self, query):
        if query.result_type in (Query.ResultType.IMAGE, Query.ResultType.AUDIO):
            return f"[{query.result_type}, {base64_size(query.result)}]"
        return excerpt(query.result, 2000)

    @admin.display(description="image or audio sent")
    def sent(self, query):
        if query.image:
            return f"image, {base64_size(query.image)}"
        if query.audio:
            return f"audio ({query.audio_format}), {base64_size(query.audio)}"
        return "-"

    @admin.display(description="charge")
    def charge(self, query):
        """Link to the query's ledger row, on the query's shard (charge ids are per database)."""
        charge = Charge.objects.filter(query_id=query.pk).first()
        if charge is None:
            return "-"
        url = reverse("admin:accounts_charge_change", args=[charge.pk])
        filters = urlencode({"_changelist_filters": urlencode({"shard": query._state.db})})
        return format_html('<a href="{}?{}">{}</a>', url, filters, charge.amount)


@admin.register(Charge)
class ChargeAdmin(ShardedAdmin):
    """The ledger, read only: a row is written once, by `accounts.billing`, when its query is answered."""

    list_display = ["id", "query_link", "user", "amount", "processing_time", "created_at"]
    search_fields = ["=query__id", "=user__guid", "=user__nickname"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    fields = readonly_fields = ["query_link", "user", "amount", "processing_time", "created_at"]

    @admin.display(description="query")
    def query_link(self, charge):
        url = reverse("admin:accounts_query_change", args=[charge.query_id])
        return format_html('<a href="{}">{}</a>', url, charge.query_id)


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

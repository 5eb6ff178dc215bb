"""Operators' admin for workers and pool aliases. Live state (health score, the health rules'
blacklist, cooldown, in flight, latency, chosen count) appears as read-only computed columns
read from Redis; the editable `is_blacklisted` is the operator's own blacklist. Saves and
deletes go through `pools.actions`, so every open socket sees a worker added here."""
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from pools import actions, state
from pools.comparison import compare_pools
from pools.health import check_worker_health
from pools.models import PoolAlias, PoolMember, SelectionOutcome, Specialization, Worker
from pools.status import member_rows, pool_graph
from rentahal.admin import ActionModelAdmin
from rentahal.errors import BrokerError


class WorkerForm(forms.ModelForm):
    """The worker's form, with its key write-only: never rendered back into the page, kept
    when left blank, and forgotten only when asked."""

    api_key = forms.CharField(
        label="API key",
        required=False,
        max_length=256,
        widget=forms.PasswordInput(render_value=False),
        help_text=Worker._meta.get_field("api_key").help_text,
    )
    forget_api_key = forms.BooleanField(label="Forget the stored key", required=False)

    class Meta:
        model = Worker
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.api_key:
            self.fields["api_key"].help_text = "A key is stored (not shown). Leave blank to keep it, or type a new one."

    def clean(self):
        data = super().clean()
        if data.get("forget_api_key"):
            data["api_key"] = ""
        elif not data.get("api_key"):
            data["api_key"] = self.instance.api_key
        return data


class SpecializationInline(admin.TabularInline):
    model = Specialization
    extra = 0


@admin.register(Worker)
class WorkerAdmin(ActionModelAdmin):
    form = WorkerForm
    list_display = ["name", "query_type", "realm", "wire_format", "health", "in_flight", "cooling_until", "latency", "max_concurrency"]
    list_filter = ["query_type", "realm", "wire_format", "is_blacklisted"]
    search_fields = ["name", "address", "model"]
    # A price is a peer broker's advertised one (federation sets it), not the operator's to edit.
    readonly_fields = [
        "health_score", "blacklisted_by_health", "last_active", "created_at", "in_flight", "cooling_until", "latency",
        "price",
    ]
    inlines = [SpecializationInline]
    actions = ["blacklist", "restore", "check_health_now", "end_cooldowns"]
    change_list_template = "admin/pools/worker/change_list.html"

    def get_urls(self):
        """Add the pool graph (`graph/`) and the data it redraws from every two seconds (`graph.json`)."""
        return [
            path("graph/", self.admin_site.admin_view(self.graph_view), name="pools_worker_graph"),
            path("graph.json", self.admin_site.admin_view(self.graph_data), name="pools_worker_graph_data"),
            *super().get_urls(),
        ]

    def graph_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {**self.admin_site.each_context(request), "title": "Pool graph", "opts": self.model._meta}
        return TemplateResponse(request, "admin/pools/graph.html", context)

    def graph_data(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        return JsonResponse(pool_graph())

    def live(self, worker) -> dict:
        return state.member_views([worker.name])[worker.name]

    @admin.display(description="health score")
    def health_score(self, worker):
        return f"{self.live(worker)['health_score']:g}"

    @admin.display(description="health")
    def health(self, worker):
        """The score, or who blacklisted the worker: one narrow column instead of three."""
        row = member_rows(None, [worker])[0]
        if row["blacklisted_by"]:
            return format_html('<span title="score {}">blacklisted by {}</span>', f"{row['health_score']:g}", row["blacklisted_by"])
        return f"{row['health_score']:g}"

    @admin.display(description="blacklisted by health checks", boolean=True)
    def blacklisted_by_health(self, worker):
        return self.live(worker)["is_blacklisted"]

    @admin.display(description="last active")
    def last_active(self, worker):
        return member_rows(None, [worker])[0]["last_active"] or "-"

    @admin.display(description="in flight")
    def in_flight(self, worker):
        return self.live(worker)["in_flight"]

    @admin.display(description="cooling until")
    def cooling_until(self, worker):
        view = self.live(worker)
        return member_rows(None, [worker])[0]["cooldown_until"] if view["cooldown_until"] else "-"

    @admin.display(description="latency (s)")
    def latency(self, worker):
        value = self.live(worker)["latency"]
        return f"{value:.3f}" if value is not None else "-"

    @admin.action(description="Blacklist the selected workers", permissions=["change"])
    def blacklist(self, request, queryset):
        self.message_user(request, f"Blacklisted {actions.set_blacklisted(queryset, True, acting_user=request.user)} worker(s).")

    @admin.action(description="Restore the selected workers from the blacklist", permissions=["change"])
    def restore(self, request, queryset):
        self.message_user(request, f"Restored {actions.set_blacklisted(queryset, False, acting_user=request.user)} worker(s).")

    @admin.action(description="Check the selected workers' health now")
    def check_health_now(self, request, queryset):
        report = check_worker_health(list(queryset))
        self.message_user(request, "; ".join(f"{name}: {outcome}" for name, outcome in report) or "No worker checked.")

    @admin.action(description="End the cooldown of the selected workers")
    def end_cooldowns(self, request, queryset):
        self.message_user(request, f"Ended the cooldown of {actions.end_cooldowns(queryset)} worker(s).")

    def save_with_action(self, request, form, formsets, change):
        topics = next((formset for formset in formsets if formset.model is Specialization), None)
        specializations = None if topics is None else {row["topic"]: row["keywords"] for row in self.kept_rows(topics)}
        actions.save_worker(form.instance, specializations=specializations, acting_user=request.user)

    def delete_model(self, request, worker):
        actions.remove_worker(worker.name, acting_user=request.user)

    def delete_queryset(self, request, queryset):
        for worker in queryset:
            actions.remove_worker(worker.name, acting_user=request.user)


class PoolMemberInline(admin.TabularInline):
    model = PoolMember
    extra = 0
    min_num = 1
    autocomplete_fields = ["worker"]

    def get_formset(self, request, obj=None, **kwargs):
        # The admin sets min_num but not validate_min, so a pool could be saved empty.
        return super().get_formset(request, obj, validate_min=True, **kwargs)


@admin.register(PoolAlias)
class PoolAliasAdmin(ActionModelAdmin):
    list_display = ["name", "realm", "query_type", "strategy", "member_count", "live_members"]
    list_filter = ["query_type", "strategy", "realm"]
    search_fields = ["name"]
    readonly_fields = ["live_members"]
    inlines = [PoolMemberInline]
    change_list_template = "admin/pools/poolalias/change_list.html"

    def get_urls(self):
        """Add the A/B comparison of two aliases with their health over time (`compare/?a=$A&b=$B&hours=N`)."""
        return [path("compare/", self.admin_site.admin_view(self.compare_view), name="pools_poolalias_compare"), *super().get_urls()]

    def compare_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        names = sorted(set(PoolAlias.objects.values_list("name", flat=True)))
        a, b = request.GET.get("a") or "", request.GET.get("b") or ""
        hours = request.GET.get("hours") or "24"
        context = {
            **self.admin_site.each_context(request), "title": "Compare two pools", "opts": self.model._meta,
            "names": names, "a": a, "b": b, "hours": hours, "report": None,
        }
        if a and b:
            try:
                context["report"] = compare_pools(a, b, hours=float(hours))
            except (BrokerError, ValueError) as exc:
                self.message_user(request, getattr(exc, "message", str(exc)), messages.ERROR)
        return TemplateResponse(request, "admin/pools/compare.html", context)

    def save_with_action(self, request, form, formsets, change):
        seats = next((formset for formset in formsets if formset.model is PoolMember), None)
        rows = [] if seats is None else self.kept_rows(seats)
        actions.save_pool(
            form.instance,
            members=None if seats is None else [row["worker"].name for row in rows],
            weights={row["worker"].name: row["weight"] for row in rows},
            acting_user=request.user,
        )

    def delete_model(self, request, pool):
        actions.delete_pool(pool, acting_user=request.user)

    def delete_queryset(self, request, queryset):
        for pool in queryset:
            actions.delete_pool(pool, acting_user=request.user)

    @admin.display(description="members")
    def member_count(self, pool):
        return pool.memberships.count()

    @admin.display(description="members now (score · in flight · latency · chosen)")
    def live_members(self, pool):
        """One short line per member, so the column fits a 1280 px screen however many there are."""
        if pool.pk is None:
            return "-"
        seats = pool.memberships.select_related("worker")
        rows = member_rows(pool, [seat.worker for seat in seats])
        return format_html_join(
            mark_safe("<br>"), "{}: {} · {} · {} · {}{}",
            (
                (
                    row["name"], f"{row['health_score']:g}", row["in_flight"],
                    "-" if row["latency"] is None else f"{row['latency']:.3f}s", row["chosen"],
                    (" · cooling" if row["cooldown_until"] else "") + (" · blacklisted" if row["is_blacklisted"] else ""),
                )
                for row in rows
            ),
        ) or "-"


@admin.register(SelectionOutcome)
class SelectionOutcomeAdmin(admin.ModelAdmin):
    list_display = ["created_at", "pool", "worker", "strategy", "attempt", "result", "time_to_first_byte", "duration", "detail"]
    list_filter = ["result", "pool", "strategy"]
    search_fields = ["worker", "pool", "detail"]
    readonly_fields = [field.name for field in SelectionOutcome._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

"""Operators' admin for workers and pool aliases. Live state (health score, the health rules'
blacklist, cooldown, in flight, latency, chosen count) appears as read-only computed columns
read from Redis; the editable `is_blacklisted` is the operator's own blacklist. Saves and
deletes go through `pools.actions`, so every open socket sees a worker added here."""
from django.contrib import admin

from pools import actions, state
from pools.models import PoolAlias, PoolMember, SelectionOutcome, Specialization, Worker
from pools.status import member_rows
from rentahal.admin import ActionModelAdmin


class SpecializationInline(admin.TabularInline):
    model = Specialization
    extra = 0


@admin.register(Worker)
class WorkerAdmin(ActionModelAdmin):
    list_display = [
        "name", "query_type", "realm", "wire_format", "health_score", "is_blacklisted", "blacklisted_by_health",
        "in_flight", "cooling_until", "latency", "max_concurrency",
    ]
    list_filter = ["query_type", "realm", "wire_format", "is_blacklisted"]
    search_fields = ["name", "address", "model"]
    # A price is a peer broker's advertised one (federation sets it), not the operator's to edit.
    readonly_fields = [
        "health_score", "blacklisted_by_health", "last_active", "created_at", "in_flight", "cooling_until", "latency",
        "price",
    ]
    inlines = [SpecializationInline]
    actions = ["end_cooldowns"]

    def live(self, worker) -> dict:
        return state.member_views([worker.name])[worker.name]

    @admin.display(description="health score")
    def health_score(self, worker):
        return f"{self.live(worker)['health_score']:g}"

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

    @admin.display(description="members now (score, in flight, latency, chosen, cooling)")
    def live_members(self, pool):
        if pool.pk is None:
            return "-"
        seats = pool.memberships.select_related("worker")
        rows = member_rows(pool, [seat.worker for seat in seats])
        return "; ".join(
            f"{row['name']}: {row['health_score']:g}, {row['in_flight']} in flight, "
            f"{'-' if row['latency'] is None else format(row['latency'], '.3f') + 's'}, chosen {row['chosen']}"
            f"{', cooling until ' + row['cooldown_until'] if row['cooldown_until'] else ''}"
            f"{', blacklisted' if row['is_blacklisted'] else ''}"
            for row in rows
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

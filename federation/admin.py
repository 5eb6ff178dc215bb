"""Operators' admin for federation: peers (approve a pending join, suspend, revoke, set the
limits granted), invitations, this broker's published public keys and settlement rows.
The private key is never stored in a table, so no page can show it. Writes go through
`federation.actions`."""
from django.contrib import admin, messages

from federation import actions
from federation.client import PeerError
from federation.discovery import advertise_to
from federation.serving import advertisement
from federation.models import Invitation, Peer, Settlement, SigningKey
from pools import state
from pools.models import WireFormat, Worker
from rentahal.admin import ActionModelAdmin


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Peer)
class PeerAdmin(ActionModelAdmin):
    list_display = ["federation_id", "base_url", "status", "introduced_by", "last_seen", "sent", "received", "failed", "cooling_until"]
    list_filter = ["status"]
    search_fields = ["federation_id", "base_url", "introduced_by"]
    readonly_fields = [
        "federation_id", "base_url", "keys", "status", "introduced_by", "awaiting_their_approval", "advertised",
        "last_seen", "sent", "received", "failed", "cooling_until", "created_at",
    ]
    fields = readonly_fields[:7] + ["queries_per_minute", "max_in_flight", "spend_limit", "spend_period_seconds"] + readonly_fields[7:]
    actions = ["approve", "suspend", "revoke"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="cooling until")
    def cooling_until(self, peer):
        names = list(Worker.objects.filter(wire_format=WireFormat.PEER, model=peer.federation_id).values_list("name", flat=True))
        views = state.member_views(names) if names else {}
        until = max((view["cooldown_until"] or 0 for view in views.values()), default=0)
        return "-" if not until else f"{until:.0f}"

    @admin.action(description="Approve the selected peers (active)")
    def approve(self, request, queryset):
        for peer in queryset:
            peer = actions.approve_peer(peer, acting_user=request.user)
            # Our first signed advertisement is what tells the peer it was approved.
            try:
                advertise_to(peer, advertisement().as_data())
            except PeerError as exc:
                self.message_user(request, f"{peer.federation_id} approved; telling it failed (discovery tries again): {exc}", messages.WARNING)
        self.message_user(request, f"Approved {queryset.count()} peer(s).")

    @admin.action(description="Suspend the selected peers")
    def suspend(self, request, queryset):
        for peer in queryset:
            actions.suspend_peer(peer, acting_user=request.user)
        self.message_user(request, f"Suspended {queryset.count()} peer(s).")

    @admin.action(description="Revoke the selected peers (for good)")
    def revoke(self, request, queryset):
        for peer in queryset:
            actions.revoke_peer(peer, acting_user=request.user)
        self.message_user(request, f"Revoked {queryset.count()} peer(s).")

    def has_delete_permission(self, request, obj=None):
        # Settlement rows keep a peer; revoking is how a peer is let go.
        return False

    def save_with_action(self, request, form, formsets, change):
        actions.save_peer_limits(form.instance, acting_user=request.user)


@admin.register(Invitation)
class InvitationAdmin(ReadOnlyAdmin):
    list_display = ["id", "note", "created_at", "expires_at", "used_at", "used_by"]


@admin.register(SigningKey)
class SigningKeyAdmin(ReadOnlyAdmin):
    list_display = ["key_id", "public_key", "valid_from", "valid_until"]


@admin.register(Settlement)
class SettlementAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "peer", "direction", "query_id", "user", "query_type", "service_seconds", "amount", "status"]
    list_filter = ["direction", "status", "peer"]
    search_fields = ["query_id", "user"]

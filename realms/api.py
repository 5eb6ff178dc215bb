"""The realm admin API under /api/realms/: list, create, update and delete realms, with their
workers, pools, metrics and scaling advice. Staff with realm permissions write (and are the
acting user); a sysop's cookie may read (realms.permissions)."""
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from realms import actions, status as realm_status
from realms.models import Realm, ScalingAdvice
from realms.permissions import StaffOrSysopReading
from realms.serializers import RealmSerializer
from rentahal.errors import NotFound

RECENT_ADVICE_SHOWN = 50


class RealmViewSet(viewsets.ViewSet):
    permission_classes = [StaffOrSysopReading]
    queryset = Realm.objects.all()
    lookup_field = "name"
    lookup_value_regex = r"[^/]+"

    def get_realm(self, name: str) -> Realm:
        realm = Realm.objects.filter(name=name).first()
        if realm is None:
            raise NotFound(f"Unknown realm '{name[:64]}'.", code="unknown_realm")
        return realm

    def list(self, request):
        realms = [realm_status.realm_status(realm) for realm in Realm.objects.all()]
        return Response({"realms": realms, "summary": realm_status.summary()})

    def retrieve(self, request, name=None):
        return Response(realm_status.realm_status(self.get_realm(name)))

    def create(self, request):
        serializer = RealmSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        realm = actions.create_realm(**serializer.action_fields(), acting_user=request.user)
        return Response(realm_status.realm_status(realm), status=status.HTTP_201_CREATED)

    def partial_update(self, request, name=None):
        realm = self.get_realm(name)
        serializer = RealmSerializer(realm, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        fields = serializer.action_fields()
        fields.pop("name", None)
        realm = actions.update_realm(realm, **fields, acting_user=request.user)
        return Response(realm_status.realm_status(realm))

    update = partial_update

    def destroy(self, request, name=None):
        actions.delete_realm(self.get_realm(name), acting_user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=False)
    def summary(self, request):
        return Response(realm_status.summary())

    @action(detail=False)
    def scaling(self, request):
        advice = ScalingAdvice.objects.select_related("realm")[:RECENT_ADVICE_SHOWN]
        return Response({"advice": [item.as_data() for item in advice]})

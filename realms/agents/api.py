"""The pool tools over DRF, for what /api/pools/ does not already do (list, create, change
and delete pools are there): health, scale, execute, route and search. Each view parses,
calls the tool's operation (agents.tools) with the staff caller, and responds; refusals
are rendered by the project's exception handler with their HTTP status."""
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from realms.agents import tools
from realms.agents.callers import caller_of
from pools.pool_routing import SELECTORS


class ScaleSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    realm = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    add = serializers.ListField(child=serializers.CharField(max_length=128), required=False, default=list)
    remove = serializers.ListField(child=serializers.CharField(max_length=128), required=False, default=list)


class ExecuteSerializer(serializers.Serializer):
    pool = serializers.CharField(max_length=64)
    prompt = serializers.CharField(trim_whitespace=False)
    realm = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")


class RouteSerializer(serializers.Serializer):
    prompt = serializers.CharField(trim_whitespace=False)
    selector = serializers.ChoiceField(choices=SELECTORS, default="least_loaded")
    query_type = serializers.CharField(max_length=16, default="chat")
    affinity_key = serializers.CharField(max_length=128, required=False, allow_blank=True, default="")
    pools = serializers.ListField(child=serializers.CharField(max_length=64), required=False, default=list)


class HealthSerializer(serializers.Serializer):
    pool = serializers.CharField(max_length=64, required=False, default="")
    realm = serializers.CharField(max_length=64, required=False, default="")


class SearchSerializer(serializers.Serializer):
    """The search's own rules (words, page, page size) are `accounts.actions.search.parse_search`'s."""

    q = serializers.CharField(required=False, default="", trim_whitespace=False)
    page = serializers.CharField(required=False, default="1")
    per_page = serializers.CharField(required=False, default="20")
    user = serializers.CharField(max_length=36, required=False, default="")


class ToolView(APIView):
    """Staff only (a session login or a staff token); changing pools needs the pools
    permissions too, which the tool checks (agents.callers.Caller.require_pool_rights)."""

    permission_classes = [IsAdminUser]
    serializer_class: type[serializers.Serializer]
    operation = None

    def run(self, data) -> Response:
        serializer = self.serializer_class(data=data)
        serializer.is_valid(raise_exception=True)
        # The undecorated operation: its refusals reach DRF's handler with their status.
        result = self.operation.__wrapped__(caller_of(self.request.user), **self.arguments(serializer.validated_data))
        return Response({"ok": True, **result})

    def arguments(self, data: dict) -> dict:
        return data


class PoolHealth(ToolView):
    serializer_class = HealthSerializer
    operation = staticmethod(tools.pool_health)

    def get(self, request):
        return self.run(request.query_params)


class PoolScale(ToolView):
    serializer_class = ScaleSerializer
    operation = staticmethod(tools.pool_scale)

    def post(self, request):
        return self.run(request.data)


class PoolExecute(ToolView):
    serializer_class = ExecuteSerializer
    operation = staticmethod(tools.pool_execute)

    def post(self, request):
        return self.run(request.data)


class PoolRouteExecute(ToolView):
    serializer_class = RouteSerializer
    operation = staticmethod(tools.pool_route_execute)

    def post(self, request):
        return self.run(request.data)


class SearchQueries(ToolView):
    serializer_class = SearchSerializer
    operation = staticmethod(tools.pool_search_memory)

    def get(self, request):
        return self.run(request.query_params)

    def arguments(self, data: dict) -> dict:
        return {"query": data["q"], "page": data["page"], "per_page": data["per_page"], "user": data["user"]}

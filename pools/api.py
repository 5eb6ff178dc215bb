"""DRF views for pool aliases and workers: parse, call an action (the acting user is the
staff login), respond with live state. Each view names its model (`queryset`): the staff
login needs that model's permissions (rentahal.permissions.StaffModelPermissions)."""
from django.shortcuts import get_object_or_404
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from pools import actions, status as pool_status
from pools.comparison import compare_pools
from pools.models import PoolAlias, Worker
from pools.serializers import PoolAliasSerializer, PoolAliasUpdateSerializer, PoolComparisonSerializer, WorkerSerializer


class PoolList(APIView):
    """GET: every pool with its members' live state. POST: create a pool alias."""

    queryset = PoolAlias.objects.all()

    def get(self, request):
        return Response(pool_status.describe_pools())

    def post(self, request):
        serializer = PoolAliasSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        pool = actions.create_pool(**serializer.validated_data, acting_user=request.user)
        return Response(pool_status.describe_pool(pool), status=status.HTTP_201_CREATED)


class PoolDetail(APIView):
    """GET, PATCH (strategy, type, members, weights) or DELETE one pool alias."""

    queryset = PoolAlias.objects.all()

    def get(self, request, pk):
        return Response(pool_status.describe_pool(get_object_or_404(PoolAlias, pk=pk)))

    def patch(self, request, pk):
        pool = get_object_or_404(PoolAlias, pk=pk)
        serializer = PoolAliasUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        members = data.pop("members", None)
        weights = data.pop("weights", None)
        for field, value in data.items():
            setattr(pool, field, value)
        if members is None and weights:
            members = list(pool.memberships.values_list("worker__name", flat=True))
        actions.save_pool(pool, members=members, weights=weights, acting_user=request.user)
        return Response(pool_status.describe_pool(pool))

    def delete(self, request, pk):
        actions.delete_pool(get_object_or_404(PoolAlias, pk=pk), acting_user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WorkerList(APIView):
    """GET: every worker with its live state. POST: register a worker (or update the one of
    that name), which every open socket then sees as `worker_update`."""

    queryset = Worker.objects.all()

    def get(self, request):
        return Response(pool_status.describe_workers())

    def post(self, request):
        serializer = WorkerSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        worker = actions.add_worker(**serializer.validated_data, acting_user=request.user)
        return Response(pool_status.describe_worker(worker), status=status.HTTP_201_CREATED)


class WorkerDetail(APIView):
    """DELETE one worker by name."""

    queryset = Worker.objects.all()

    def delete(self, request, name):
        actions.remove_worker(name, acting_user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class PoolComparison(APIView):
    """GET ?a=$X&b=$Y[&realm=$R][&hours=N]: the A/B report of two aliases."""

    queryset = PoolAlias.objects.all()

    def get(self, request):
        serializer = PoolComparisonSerializer(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        query = serializer.validated_data
        a, b = query["a"], query["b"]
        unknown = [name for name in (a, b) if not PoolAlias.objects.filter(name=name).exists()]
        if unknown:
            raise ValidationError({"a" if a in unknown else "b": f"No pool alias named {', '.join(unknown)}."})
        return Response(compare_pools(a, b, realm=query.get("realm"), hours=query.get("hours")))

"""Validation of what peers send: joins, advertisements and routed queries."""
from rest_framework import serializers

from federation.models import FEDERATION_ID_PATTERN, ROUTED_QUERY_TYPES
from rentahal.query_types import QueryType

MAX_PROMPT_CHARS = 32_000


class KeySerializer(serializers.Serializer):
    key_id = serializers.CharField(max_length=64)
    public_key = serializers.CharField(max_length=64)
    valid_until = serializers.DateTimeField(allow_null=True, required=False)


class JoinSerializer(serializers.Serializer):
    federation_id = serializers.RegexField(FEDERATION_ID_PATTERN, max_length=63)
    base_url = serializers.URLField(max_length=512)
    keys = KeySerializer(many=True, min_length=1, max_length=8)
    token = serializers.CharField(max_length=128, required=False, allow_blank=True, default="")


class JoinAnswerSerializer(serializers.Serializer):
    status = serializers.ChoiceField(["active", "pending"])
    federation_id = serializers.CharField()
    base_url = serializers.CharField()
    keys = KeySerializer(many=True)


class AdvertiseSerializer(serializers.Serializer):
    query_types = serializers.ListField(child=serializers.ChoiceField(QueryType.choices), max_length=16)
    aliases = serializers.ListField(child=serializers.CharField(max_length=64), max_length=64, required=False, default=list)
    capacity = serializers.IntegerField(min_value=0, max_value=100_000)
    price_per_query = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0)
    price_per_second = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0)


class PeerEntrySerializer(serializers.Serializer):
    federation_id = serializers.CharField()
    base_url = serializers.CharField()
    keys = KeySerializer(many=True)
    advertised = serializers.DictField()


class DiscoverSerializer(serializers.Serializer):
    peers = PeerEntrySerializer(many=True)


class RouteSerializer(serializers.Serializer):
    query_id = serializers.CharField(max_length=64)
    user = serializers.RegexField(r"^[0-9a-f]{1,64}$")
    query_type = serializers.ChoiceField([(value, value) for value in ROUTED_QUERY_TYPES])
    prompt = serializers.CharField(max_length=MAX_PROMPT_CHARS, allow_blank=True, trim_whitespace=False)
    model_type = serializers.CharField(max_length=32, required=False, default="worker_node")
    image = serializers.CharField(required=False, allow_null=True, allow_blank=True, default=None)
    hops = serializers.IntegerField(min_value=1, max_value=64)
    via = serializers.ListField(child=serializers.RegexField(FEDERATION_ID_PATTERN, max_length=63), min_length=1, max_length=64)


class RouteLineSerializer(serializers.Serializer):
    """One NDJSON line of the answer: a chunk, then the result or an error."""

    chunk = serializers.CharField(required=False)
    result = serializers.CharField(required=False)
    result_type = serializers.CharField(required=False)
    service_seconds = serializers.FloatField(required=False)
    broker = serializers.CharField(required=False)
    error = serializers.DictField(required=False)


class StatusSerializer(serializers.Serializer):
    federation_id = serializers.CharField()
    realms = serializers.ListField(child=serializers.DictField())
    workers_by_type = serializers.DictField(child=serializers.IntegerField())
    capacity = serializers.IntegerField()


class SettlementRowSerializer(serializers.Serializer):
    direction = serializers.CharField()
    query_id = serializers.CharField()
    user = serializers.CharField()
    query_type = serializers.CharField()
    service_seconds = serializers.FloatField()
    amount = serializers.DecimalField(max_digits=14, decimal_places=6)
    status = serializers.CharField()
    created_at = serializers.DateTimeField()


class SettlementSerializer(serializers.Serializer):
    federation_id = serializers.CharField()
    rows = SettlementRowSerializer(many=True)

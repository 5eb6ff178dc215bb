"""DRF serializers for pool aliases and workers: validation of input only; the actions do the writes."""
from rest_framework import serializers

from pools.models import Strategy, alias_name_validator, realm_name_validator
from rentahal.query_types import QueryType


class PoolAliasSerializer(serializers.Serializer):
    """A pool alias as the API takes it; members are worker names, weights optional."""

    name = serializers.CharField(max_length=64, validators=[alias_name_validator])
    realm = serializers.CharField(
        max_length=64, required=False, allow_blank=True, default="", validators=[realm_name_validator]
    )
    query_type = serializers.ChoiceField(choices=QueryType.choices)
    strategy = serializers.ChoiceField(
        choices=Strategy.choices, default=Strategy.AUTO,
        error_messages={"invalid_choice": f'"{{input}}" is not a strategy; choose one of {", ".join(Strategy.values)}.'},
    )
    members = serializers.ListField(
        child=serializers.CharField(max_length=128), allow_empty=False,
        error_messages={"empty": "A pool needs at least one member."},
    )
    weights = serializers.DictField(child=serializers.IntegerField(min_value=1), required=False, default=dict)

    def validate(self, data):
        unknown = set(data.get("weights") or {}) - set(data.get("members") or data.get("weights") or {})
        if unknown:
            raise serializers.ValidationError({"weights": f"Not members: {', '.join(sorted(unknown))}."})
        return data


class PoolComparisonSerializer(serializers.Serializer):
    """The query string of the A/B report, ?a=$X&b=$Y[&realm=$R][&hours=N]: text without NUL
    (Postgres refuses it), hours a finite number (`pools.comparison.window_start` bounds it)."""

    a = serializers.CharField(error_messages={"required": "Name two aliases: ?a=$X&b=$Y.", "blank": "Name two aliases: ?a=$X&b=$Y."})
    b = serializers.CharField(error_messages={"required": "Name two aliases: ?a=$X&b=$Y.", "blank": "Name two aliases: ?a=$X&b=$Y."})
    realm = serializers.CharField(required=False)
    hours = serializers.FloatField(required=False, error_messages={"invalid": "hours must be a number."})


class PoolAliasUpdateSerializer(PoolAliasSerializer):
    """A partial change: any field may be left out (name and realm cannot change)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, partial=True, **kwargs)
        for field in ("name", "realm"):
            self.fields.pop(field)


class WorkerSerializer(serializers.Serializer):
    """A worker as the API takes it: the shape only. The rules (known type and wire format,
    realm name) are the model's, checked by `pools.actions.add_worker` as for the sysop's
    `add_worker` frame, so both refuse with the same fields and messages."""

    name = serializers.CharField()
    address = serializers.CharField()
    query_type = serializers.CharField()
    wire_format = serializers.CharField(required=False, default="predict")
    model = serializers.CharField(required=False, allow_blank=True, default="")
    realm = serializers.CharField(required=False, allow_blank=True, default="")
    max_concurrency = serializers.IntegerField(min_value=0, required=False, default=0)
    # Write-only: never in an answer. Left out, a worker keeps the key it has.
    api_key = serializers.CharField(required=False, allow_blank=True, write_only=True, max_length=256)

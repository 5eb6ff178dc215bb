"""DRF serializers for pool aliases: validation of input only; the actions do the writes."""
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


class PoolAliasUpdateSerializer(PoolAliasSerializer):
    """A partial change: any field may be left out (name and realm cannot change)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, partial=True, **kwargs)
        for field in ("name", "realm"):
            self.fields.pop(field)

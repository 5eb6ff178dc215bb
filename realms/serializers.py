"""Validation of realm admin API input; writes go through realms.actions."""
from rest_framework import serializers

from pools.models import realm_name_validator
from realms.models import Realm
from rentahal.query_types import QueryType


class RealmSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=64, validators=[realm_name_validator])
    primary_query_type = serializers.ChoiceField(
        choices=QueryType.choices,
        allow_null=True,
        error_messages={"required": "A realm needs a primary query type."},
    )
    min_workers = serializers.IntegerField(min_value=0, required=False)
    max_workers = serializers.IntegerField(min_value=1, required=False)
    queue_limit = serializers.IntegerField(min_value=0, required=False)
    backups = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField(max_length=64), allow_empty=True),
        required=False,
        help_text='Ordered backup realm names per query type, e.g. {"imagine": ["$IMAGINE_2"]}.',
    )

    def validate_primary_query_type(self, value):
        if not value:
            raise serializers.ValidationError("A realm needs a primary query type.")
        return value

    def validate_backups(self, value):
        unknown_types = sorted(set(value) - set(QueryType.values))
        if unknown_types:
            raise serializers.ValidationError(
                f"Unknown query type(s): {', '.join(unknown_types)}; expected {', '.join(QueryType.values)}."
            )
        names = {name for names in value.values() for name in names}
        realms = {realm.name: realm for realm in Realm.objects.filter(name__in=names)}
        unknown = sorted(names - set(realms))
        own_name = self.instance.name if self.instance is not None else self.initial_data.get("name")
        if own_name in names:
            raise serializers.ValidationError("A realm cannot be its own backup.")
        if unknown:
            raise serializers.ValidationError(f"Unknown realm(s): {', '.join(unknown)}.")
        return {query_type: [realms[name] for name in names] for query_type, names in value.items()}

    def validate(self, attrs):
        instance = self.instance
        minimum = attrs.get("min_workers", instance.min_workers if instance else 1)
        maximum = attrs.get("max_workers", instance.max_workers if instance else 10)
        if minimum > maximum:
            raise serializers.ValidationError({"min_workers": "min_workers must not exceed max_workers."})
        if instance is not None and attrs.get("name", instance.name) != instance.name:
            raise serializers.ValidationError({"name": "A realm cannot be renamed."})
        return attrs

    def action_fields(self) -> dict:
        """Return the validated data as keyword arguments of realms.actions."""
        data = dict(self.validated_data)
        if "primary_query_type" in data:
            data["query_type"] = data.pop("primary_query_type")
        return data

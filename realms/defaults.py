"""The realms every installation starts with: one per query type."""

DEFAULT_REALMS = [("$CHAT", "chat"), ("$VISION", "vision"), ("$IMAGINE", "imagine"), ("$SPEECH", "speech")]


def ensure_default_realms(realm_model, *, using: str = "default") -> None:
    """Create any missing default realm; a realm an operator edited is left as it is."""
    for name, query_type in DEFAULT_REALMS:
        if not realm_model.objects.using(using).filter(query_type=query_type).exists():
            realm_model.objects.using(using).get_or_create(name=name, defaults={"query_type": query_type})

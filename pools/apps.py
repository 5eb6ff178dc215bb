from django.apps import AppConfig


class PoolsConfig(AppConfig):
    name = "pools"
    verbose_name = "Workers and pools"

    def ready(self):
        # Connects the signals that tell every process its pool snapshot is stale.
        from pools import config  # noqa: F401

from django.apps import AppConfig


class RealmsConfig(AppConfig):
    name = "realms"
    verbose_name = "Realms"

    def ready(self):
        # Connects the signals that tell every process its cached realm registry is stale,
        # and the one that tells sysops a realm lost (or regained) its last serving worker.
        from realms import alerts, registry  # noqa: F401
        from realms.status import realm_gauges
        from rentahal import metrics

        metrics.register_collector(metrics.LiveRealmCollector(realm_gauges))

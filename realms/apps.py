from django.apps import AppConfig


class RealmsConfig(AppConfig):
    name = "realms"
    verbose_name = "Realms"

    def ready(self):
        from realms.status import realm_gauges
        from rentahal import metrics

        metrics.register_collector(metrics.LiveRealmCollector(realm_gauges))

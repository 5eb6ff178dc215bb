from django.apps import AppConfig


class RentahalConfig(AppConfig):
    name = "rentahal"
    verbose_name = "rentahal"

    def ready(self):
        from rentahal import checks  # noqa: F401  (registers the system checks)

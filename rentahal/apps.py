from django.apps import AppConfig


class RentahalConfig(AppConfig):
    name = "rentahal"
    verbose_name = "rentahal"

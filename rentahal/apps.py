from django.apps import AppConfig


class RentahalConfig(AppConfig):
    name = "rentahal"
    verbose_name = "rentahal"

    def ready(self):
        from django.contrib import admin

        from rentahal import checks  # noqa: F401  (registers the system checks)
        from rentahal.rq_dashboard import guard_admin_entry

        # The admin's own ready() (earlier in INSTALLED_APPS) has registered django-rq's entry by now.
        guard_admin_entry(admin.site)

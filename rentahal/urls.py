"""URL wiring: the users' page, the operators' admin, django-rq's dashboard (behind its own
permission, rentahal.rq_dashboard), the APIs."""
from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

from rentahal.metrics import metrics_view

urlpatterns = [
    path("", TemplateView.as_view(template_name="index.html"), name="index"),
    path("admin/rq/", include("rentahal.rq_dashboard")),
    path("admin/", admin.site.urls),
    path("api/realms/", include("realms.urls")),
    path("metrics", metrics_view, name="metrics"),
    path("api/pools/", include("pools.urls")),
    path("api/agents/", include("agents.urls")),
]

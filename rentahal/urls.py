"""URL wiring: the users' page, the operators' admin, django-rq's dashboard (behind its own
permission, rentahal.rq_dashboard), the APIs and their schema, the HTTP doors for programs
(/v1 and the classic routes), and the health checks."""
from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from realms.doors.urls import classic_patterns, v1_patterns
from realms.readiness import health, ready
from rentahal.metrics import metrics_view

urlpatterns = [
    path("", TemplateView.as_view(template_name="index.html"), name="index"),
    path("admin/rq/", include("rentahal.rq_dashboard")),
    path("admin/", admin.site.urls),
    path("api/realms/", include("realms.urls")),
    path("metrics", metrics_view, name="metrics"),
    path("api/pools/", include("pools.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="schema-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="schema-redoc"),
    path("api/", include(classic_patterns)),
    path("v1/", include(v1_patterns)),
    path("health", health, name="health"),
    path("ready", ready, name="ready"),
]

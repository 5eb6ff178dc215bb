"""URL wiring: the users' page, the operators' admin, django-rq's dashboard (behind its own
permission, rentahal.rq_dashboard), the APIs and their schema, the federation identity at
its well-known URL, the HTTP doors for programs (/v1 and the classic routes), and the health
checks."""
from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView, TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from federation.api import WellKnownView
from federation.identity import WELL_KNOWN_PATH
from realms.doors.urls import CLASSIC_PREFIX, V1_PREFIX, classic_patterns, v1_patterns
from realms.readiness import health, ready
from rentahal.metrics import metrics_view

urlpatterns = [
    # The doors first: programs call them most, and each pattern tried before costs a lookup.
    path(V1_PREFIX, include(v1_patterns)),
    path(CLASSIC_PREFIX, include(classic_patterns)),
    path("", TemplateView.as_view(template_name="index.html"), name="index"),
    # Browsers ask for /favicon.ico whatever the page's <link rel="icon"> says.
    path("favicon.ico", RedirectView.as_view(url=static("rentahal/favicon.ico"), permanent=True)),
    path("admin/rq/", include("rentahal.rq_dashboard")),
    path("admin/", admin.site.urls),
    path("api/realms/", include("realms.urls")),
    path("metrics", metrics_view, name="metrics"),
    path("api/pools/", include("pools.urls")),
    path("api/federation/", include("federation.urls")),
    path(WELL_KNOWN_PATH.lstrip("/"), WellKnownView.as_view(), name="federation-well-known"),
    path("api/agents/", include("realms.agents.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="schema-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="schema-redoc"),
    path("health", health, name="health"),
    path("ready", ready, name="ready"),
]

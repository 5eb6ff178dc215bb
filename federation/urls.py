"""Routes of the federation API, mounted at /api/federation/."""
from django.urls import path

from federation import api

urlpatterns = [
    path("join", api.JoinView.as_view(), name="federation-join"),
    path("advertise", api.AdvertiseView.as_view(), name="federation-advertise"),
    path("discover", api.DiscoverView.as_view(), name="federation-discover"),
    path("route", api.RouteView.as_view(), name="federation-route"),
    path("status", api.StatusView.as_view(), name="federation-status"),
    path("settlement", api.SettlementView.as_view(), name="federation-settlement"),
]

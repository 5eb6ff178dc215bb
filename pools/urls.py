"""Routes of the pools API, mounted at /api/pools/."""
from django.urls import path

from pools import api

urlpatterns = [
    path("", api.PoolList.as_view(), name="pool-list"),
    path("<int:pk>/", api.PoolDetail.as_view(), name="pool-detail"),
    path("workers/", api.WorkerList.as_view(), name="pool-workers"),
    path("workers/<str:name>/", api.WorkerDetail.as_view(), name="pool-worker"),
    path("compare/", api.PoolComparison.as_view(), name="pool-compare"),
]

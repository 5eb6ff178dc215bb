"""Routes of the agents' API, mounted at /api/agents/."""
from django.urls import path

from realms.agents import api

urlpatterns = [
    path("pools/health/", api.PoolHealth.as_view(), name="agent-pool-health"),
    path("pools/scale/", api.PoolScale.as_view(), name="agent-pool-scale"),
    path("pools/execute/", api.PoolExecute.as_view(), name="agent-pool-execute"),
    path("pools/route/", api.PoolRouteExecute.as_view(), name="agent-pool-route"),
    path("search/", api.SearchQueries.as_view(), name="agent-search"),
]

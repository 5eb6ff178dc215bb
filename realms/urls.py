"""Routes of the realm admin API, mounted at /api/realms/."""
from rest_framework.routers import SimpleRouter

from realms.api import RealmViewSet

router = SimpleRouter()
router.register("", RealmViewSet, basename="realm")

urlpatterns = router.urls

"""The one-machine run command starts a realm worker of its own for every realm, so a backlog
in one realm cannot hold up another's queries."""
import pytest

from realms.management.commands.run_broker import realm_workers
from realms.models import Realm


@pytest.mark.django_db
def test_run_broker_starts_one_realm_worker_per_realm_serving_only_that_realm(default_realms):
    workers = realm_workers({})

    served = sorted(worker.argv[-1] for worker in workers)
    assert served == sorted(Realm.objects.values_list("name", flat=True))
    assert all(worker.argv[-2] == "run_realm_worker" for worker in workers)

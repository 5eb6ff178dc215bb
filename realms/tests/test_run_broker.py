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
    # Each under an RQ worker name of its own, which the watchdog reads its heartbeat by.
    assert all(worker.argv[-4:-1] == ["run_realm_worker", "--name", worker.worker_name] for worker in workers)
    assert len({worker.worker_name for worker in workers}) == len(workers)

"""The admin's failed queries page: RQ's failed jobs joined to their queries, retried through
the normal submission path (twice is still one new query) or discarded."""
import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from rq.job import Job

from accounts.models import Query
from conftest import make_staff
from realms import lifecycle
from realms.frames import parse_submission
from rentahal.queues import get_queue

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/admin/realms/realm/failed/"


def record_crash(query_id: str) -> None:
    """Leave the query's job in RQ's failed registry, as RQ does when a job crashed on its last run."""
    queue = get_queue("realm.chat")
    queue.remove(query_id)
    job = Job.create(lifecycle.run_query, args=(query_id,), id=query_id, connection=queue.connection, origin=queue.name)
    queue.failed_job_registry.add(job, exc_string="Traceback (most recent call last):\nRuntimeError: boom")


@pytest.fixture
def crashed_query(alice, default_realms):
    """A chat query whose job crashed on every run: failed in Postgres, in RQ's failed registry."""
    frame = lifecycle.accept_query(alice.guid, parse_submission({"prompt": "why did it crash?", "query_type": "chat"}))
    record_crash(frame["query_id"])
    async_to_sync(lifecycle.fail_query)(frame["query_id"], "internal error (RuntimeError)")
    return Query.objects.get(pk=frame["query_id"])


@pytest.fixture
def operator_client(operator):
    client = Client()
    client.force_login(operator)
    return client


def test_failed_jobs_are_listed_with_their_query_user_and_reason(operator_client, crashed_query):
    page = operator_client.get(URL)

    assert page.status_code == 200
    row = page.context["failed"][0]
    assert (row.job_id, row.realm, row.user, row.reason) == (
        str(crashed_query.id), "$CHAT", "alice", "internal error (RuntimeError)"
    )
    assert b"why did it crash?" in page.content


def test_retry_submits_the_question_again_once_however_often_it_is_asked(operator_client, crashed_query, alice):
    chosen = {"do": "retry", "job": f"realm.chat|{crashed_query.id}"}

    assert operator_client.post(URL, chosen).status_code == 302
    record_crash(str(crashed_query.id))
    operator_client.post(URL, chosen)

    queries = list(Query.objects.filter(user_id=alice.guid).order_by("accepted_at"))
    assert [(query.prompt, query.status) for query in queries] == [
        ("why did it crash?", "failed"), ("why did it crash?", "accepted")
    ]
    assert get_queue("realm.chat").job_ids == [str(queries[1].id)]
    assert operator_client.get(URL).context["failed"] == []


def test_discard_forgets_the_job_and_keeps_the_querys_record(operator_client, crashed_query):
    operator_client.post(URL, {"do": "discard", "job": f"realm.chat|{crashed_query.id}"})

    assert operator_client.get(URL).context["failed"] == []
    assert Query.objects.get(pk=crashed_query.id).status == "failed"


def test_staff_who_may_only_view_realms_cannot_retry(crashed_query):
    client = Client()
    client.force_login(make_staff("viewer", "realms.view_realm"))

    assert client.get(URL).status_code == 200
    assert client.post(URL, {"do": "retry", "job": f"realm.chat|{crashed_query.id}"}).status_code == 403
    assert Query.objects.count() == 1

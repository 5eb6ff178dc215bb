"""An HTTP door (/v1, the classic routes) answers from its query's final push, which carries
everything the door tells its caller; the row, the record, is read only when the pushes
fall silent (realms.doors.answers)."""
import asyncio

import pytest
from asgiref.sync import sync_to_async

from accounts.actions.queries import Answer, finish_queries
from accounts.models import Query
from realms import lifecycle
from realms.doors import answers
from realms.doors.answers import Submission
from realms.frames import QuerySubmission
from rentahal.pushes import push_frame

pytestmark = pytest.mark.django_db(transaction=True)

SUBMISSION = QuerySubmission(prompt="hello", query_type="chat", model_type="worker_node", model_name="", image="")


@pytest.mark.parametrize(
    "final",
    [
        {"type": "query_result", "result": "hi", "result_type": "text", "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
        {"type": "transcription_result", "text": "hello", "usage": {}},
        {"type": "speech_result", "audio": "UklGRg==", "usage": {}},
        {"type": "error", "code": "query_failed", "message": "Query failed: the server hung up"},
    ],
    ids=lambda frame: frame["type"],
)
async def test_a_door_ends_on_its_querys_final_push_with_that_frame(final, default_realms, alice):
    async with Submission(alice.guid) as submitted:
        query_id = await submitted.accept(SUBMISSION)
        pushed = {**final, "query_id": query_id}
        await push_frame(alice.guid, {"type": "query_chunk", "query_id": "another-query", "chunk": "not ours"})
        await push_frame(alice.guid, pushed)

        # The row stays `accepted`: only the push can end the wait.
        outcome = await asyncio.wait_for(submitted.outcome(), timeout=10)

    assert outcome == pushed


async def test_a_door_whose_final_push_was_lost_answers_from_the_finished_row(default_realms, alice, monkeypatch):
    monkeypatch.setattr(answers, "SILENCE_SECONDS", 0.2)
    async with Submission(alice.guid) as submitted:
        query_id = await submitted.accept(SUBMISSION)
        query = await sync_to_async(Query.objects.get)(pk=query_id)
        # Finished without a push, as if the push were lost on its way.
        await sync_to_async(finish_queries)([Answer(query, result="from the row", result_type="text", worker="w", processing_time=0.5, usage={"prompt_tokens": 2})])

        outcome = await asyncio.wait_for(submitted.outcome(), timeout=10)

    finished = await sync_to_async(Query.objects.get)(pk=query_id)
    assert outcome == lifecycle.result_frame(finished)
    assert (outcome["result"], outcome["usage"]) == ("from the row", {"prompt_tokens": 2})

"""The speech realm's work: a speech query is heard (speech to text), answered by the chat
realm's pools, and spoken when asked (text to speech); `speech_to_text` and
`text_to_speech` frames run one step each. Every step is an ordinary `pools.dispatch.serve`
call, so selection, failover and health apply, and the query is billed once, for the
service seconds of all its steps together (`realms.lifecycle.finish_query`).

Who transcribes and who speaks are the pool aliases SPEECH_TO_TEXT_POOL and
TEXT_TO_SPEECH_POOL (workers of type speech, any server of the `openai_audio` wire format);
`run_broker` puts the bundled Whisper and Piper servers in them.
"""
from __future__ import annotations

import dataclasses

from asgiref.sync import sync_to_async

from accounts.models import Query
from pools.clients import ChunkCallback, ModelRequest
from pools.dispatch import Served, serve
from realms.frames import MAX_SPEECH_TEXT_CHARS
from realms.routing import realm_for_query_type
from rentahal.errors import BrokerError
from rentahal.query_types import QueryType

Task = Query.SpeechTask
SPEECH_TO_TEXT_POOL = "$SPEECH_TO_TEXT"
TEXT_TO_SPEECH_POOL = "$TEXT_TO_SPEECH"
WORKER_NAME_CHARS = 128


class NothingHeard(BrokerError):
    code = "nothing_heard"


@dataclasses.dataclass(frozen=True)
class Spoken(Served):
    """A speech query's last answer, billed for all its steps, and the words heard in its audio."""

    heard: str = ""


async def serve_speech(query: Query, *, on_chunk: ChunkCallback | None = None) -> Spoken:
    """Run the steps of the query's speech task and return the last answer, billed for all.

    A chat answer is streamed as `query_chunk` frames only when it is the result (a text
    answer); one to be spoken is cut at the speech servers' text limit.
    """
    steps: list[Served] = []
    task = query.speech_task
    heard = ""
    text = query.prompt
    if task in (Task.ANSWER, Task.ANSWER_ALOUD, Task.TRANSCRIBE):
        request = ModelRequest(
            prompt="", query_type=QueryType.SPEECH, audio=query.audio, audio_format=query.audio_format,
            model_name=SPEECH_TO_TEXT_POOL,
        )
        steps.append(await serve(request, realm=query.realm, affinity_key=query.user_id))
        heard = text = steps[-1].answer.result.strip()
        if not heard and task != Task.TRANSCRIBE:
            raise NothingHeard("No words were heard in the audio.")
    if task in (Task.ANSWER, Task.ANSWER_ALOUD):
        chat_realm = await sync_to_async(realm_for_query_type)(QueryType.CHAT)
        # The chat realm's own pools choose: a speech query's model_name names no chat model.
        request = ModelRequest(prompt=text, query_type=QueryType.CHAT)
        streaming = on_chunk if task == Task.ANSWER else None
        steps.append(await serve(request, realm=chat_realm.name, affinity_key=query.user_id, on_chunk=streaming))
        text = steps[-1].answer.result
    if task in (Task.ANSWER_ALOUD, Task.SPEAK):
        request = ModelRequest(
            prompt=text[:MAX_SPEECH_TEXT_CHARS], query_type=QueryType.SPEECH, model_name=TEXT_TO_SPEECH_POOL
        )
        steps.append(await serve(request, realm=query.realm, affinity_key=query.user_id))
    return billed_together(steps, heard=heard)


def billed_together(steps: list[Served], *, heard: str) -> Spoken:
    """Return the last step's answer, naming every worker and adding up what is billed."""
    last = steps[-1]
    return Spoken(
        worker=", ".join(dict.fromkeys(step.worker for step in steps))[:WORKER_NAME_CHARS],
        answer=last.answer,
        pool=last.pool,
        strategy=last.strategy,
        worker_realm=last.worker_realm,
        is_cross_realm=any(step.is_cross_realm for step in steps),
        attempts=sum(step.attempts for step in steps),
        service_seconds=sum(step.service_seconds for step in steps),
        heard=heard,
    )

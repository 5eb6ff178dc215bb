"""What every model-server client shares: the request, the answer, how calls fail, and how
an answer is read (timeouts, byte cap, status → error kind) so each wire format only parses."""
from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import orjson

from pools import providers
from rentahal import outbound

# How much of an error body goes into the message operators see.
ERROR_EXCERPT_CHARS = 300


@dataclasses.dataclass(frozen=True)
class ModelRequest:
    """One query as a model server needs it, whatever its wire format."""

    prompt: str
    query_type: str
    model_type: str = "worker_node"
    model_name: str = ""
    image: str | None = None  # base64, no data: prefix
    audio: str | None = None  # base64
    audio_format: str = ""  # the audio's container: wav or webm
    # What an HTTP door asked beyond the prompt (accounts.Query.options): `messages` (the
    # conversation, text only; `image` joins its last user message), `max_tokens`,
    # `temperature`, `stop`, `width`/`height` of an image, and `task`: "embed" asks for the
    # prompt's embedding (`ModelClient.embed`) instead of an answer.
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def is_embedding(self) -> bool:
        return self.options.get("task") == "embed"

    def embedding_inputs(self) -> list[str]:
        """Return the texts to embed: the door's `input` list, else the prompt alone."""
        return list(self.options.get("input") or [self.prompt])

    def chat_messages(self) -> list[dict]:
        """Return the conversation as role/content pairs, the prompt alone when there is none."""
        messages = self.options.get("messages") or [{"role": "user", "content": self.prompt}]
        return [{"role": message["role"], "content": message["content"]} for message in messages]


@dataclasses.dataclass(frozen=True)
class ModelAnswer:
    """What a model server produced, and how long its first byte took (for latency stats)."""

    result: str
    result_type: str = "text"  # text, image (base64 PNG) or audio (base64)
    time_to_first_byte: float | None = None
    # Token counts the server reported (prompt_tokens, completion_tokens), empty when it did not.
    usage: dict = dataclasses.field(default_factory=dict)


class ModelServerError(Exception):
    """A call that did not produce an answer.

    `kind` says whose fault it was, which decides retry and cooldown:
    - "server": 5xx, refused connection, reset, garbage or oversized answer;
    - "timeout": no answer in time (connect or read);
    - "rate_limited": 429, with `retry_after` seconds when the server said so;
    - "auth": 401/403, the server will not serve us until an operator acts;
    - "client": 4xx for a bad request: the same request fails everywhere, so no retry.

    Not a `rentahal.errors.BrokerError`: it is why a call failed, which dispatch retries on
    another worker or turns into a failed query, never a refusal of what a client asked.
    It carries a stable `code` all the same (`model_server`, `model_timeout`, ...), for
    whoever reports the failure.

    `message` is for operators (the log, the attempt's outcome row): it names the server and
    quotes what it said. Users are told `public_reason` only, one text whatever went wrong:
    the server's words may hold internal detail, and telling refused from timed out from
    unresolved would let a user map the network behind the broker.
    """

    RETRYABLE = frozenset({"server", "timeout", "rate_limited", "auth"})
    public_reason = "The model server failed."

    def __init__(self, message: str, *, kind: str = "server", status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status
        self.retry_after = retry_after

    @property
    def code(self) -> str:
        return f"model_{self.kind}"

    @property
    def is_server_fault(self) -> bool:
        return self.kind in self.RETRYABLE


ChunkCallback = Callable[[str], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class CallLimits:
    connect_timeout: float = 5.0
    read_timeout: float = 300.0
    max_answer_bytes: int = 32 * 1024 * 1024


class ModelClient:
    """One wire format. Subclasses implement `call` and `probe`.

    A client holds no per-worker state; the caller passes the worker (anything with
    `base_url`, `model`, `api_key` and `name`) and an aiohttp session it owns, so one
    process reuses connections across queries.
    """

    wire_format: str = ""
    serves_embeddings = False

    async def call(
        self,
        session: aiohttp.ClientSession,
        worker,
        request: ModelRequest,
        *,
        limits: CallLimits,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelAnswer:
        raise NotImplementedError

    async def embed(
        self, session: aiohttp.ClientSession, worker, request: ModelRequest, *, limits: CallLimits
    ) -> ModelAnswer:
        """Return the prompt's embedding as a JSON list of floats (`result`); only formats
        with `serves_embeddings` implement it, and dispatch sends embeddings to no other."""
        raise ModelServerError(f"{worker.name} ({self.wire_format}) serves no embeddings", kind="client")

    async def probe(self, session: aiohttp.ClientSession, worker, *, timeout: float) -> int | None:
        """Return the HTTP status of the format's natural health route, None if it has none.

        An unreachable server raises ModelServerError ("timeout" or "server"), because the
        health score treats "no answer" differently from "answered non-200" (docs/protocol.md §3).
        """
        raise NotImplementedError


def malformed(worker, detail: str) -> ModelServerError:
    """Return the error for an answer that arrived but cannot be understood."""
    return ModelServerError(f"malformed answer from {worker.name}: {detail}", kind="server")


@contextlib.contextmanager
def failures_reported(worker, timeout: aiohttp.ClientTimeout) -> Iterator[None]:
    """Turn aiohttp's transport and timeout exceptions, and addresses the outbound policy
    refuses, into ModelServerError with readable messages."""
    try:
        yield
    except outbound.ForbiddenAddress as exc:
        raise ModelServerError(f"{worker.name} at {worker.base_url} is refused by the outbound address policy: {exc}") from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise ModelServerError(
            f"{worker.name} at {worker.base_url} timed out connecting after {timeout.sock_connect:g}s",
            kind="timeout",
        ) from exc
    # TimeoutError must come before OSError, which it subclasses.
    except TimeoutError as exc:
        raise ModelServerError(f"{worker.name} timed out after {timeout.total:g}s", kind="timeout") from exc
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or str(exc.os_error)
        raise ModelServerError(f"could not connect to {worker.name} at {worker.base_url}: {reason}") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise ModelServerError(f"{worker.name} closed the connection before finishing its answer") from exc
    except aiohttp.ClientPayloadError as exc:
        raise ModelServerError(f"{worker.name} sent a broken answer: {exc}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise ModelServerError(f"call to {worker.name} failed: {exc}") from exc


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a Retry-After header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for_status(worker, status: int, *, retry_after: str | None, excerpt: str) -> ModelServerError:
    """Classify a non-2xx answer by whose fault it is (see ModelServerError)."""
    detail = f": {excerpt}" if excerpt else ""
    if 300 <= status < 400:
        return ModelServerError(
            f"{worker.name} answered with a redirect (HTTP {status}), redirect refused: register the address it "
            f"redirects to instead{detail}",
            kind="server",
            status=status,
        )
    if status == 429:
        seconds = parse_retry_after(retry_after)
        wait = f", retry after {seconds:g}s" if seconds is not None else ""
        return ModelServerError(
            f"{worker.name} is rate limiting requests (HTTP 429{wait}){detail}",
            kind="rate_limited",
            status=status,
            retry_after=seconds,
        )
    if status in (401, 403):
        return ModelServerError(
            f"{worker.name} refused our credentials (HTTP {status}){detail}", kind="auth", status=status
        )
    if 400 <= status < 500:
        return ModelServerError(f"{worker.name} rejected the request (HTTP {status}){detail}", kind="client", status=status)
    return ModelServerError(f"{worker.name} failed (HTTP {status}){detail}", kind="server", status=status)


def describe_error_body(body: bytes) -> str:
    """Return the human part of an error body: OpenAI/Ollama/FastAPI put it in error or detail."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace")
    else:
        error = (data.get("error") or data.get("detail")) if isinstance(data, dict) else None
        if isinstance(error, dict):
            error = error.get("message")
        text = error if isinstance(error, str) else body.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= ERROR_EXCERPT_CHARS else text[:ERROR_EXCERPT_CHARS] + "…"


class AnswerBody:
    """A 2xx answer's body, read under the byte cap, noting when its first byte arrived."""

    def __init__(self, worker, response: aiohttp.ClientResponse, *, limits: CallLimits, timeout: aiohttp.ClientTimeout, started: float):
        self.worker = worker
        self.response = response
        self.max_bytes = limits.max_answer_bytes
        self.timeout = timeout
        self.started = started
        self.time_to_first_byte: float | None = None

    def too_large(self) -> ModelServerError:
        return ModelServerError(f"{self.worker.name} sent an answer larger than {self.max_bytes} bytes")

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives; stop with an error once it passes the cap.

        Only the reads sit under failures_reported: an OSError or TimeoutError raised by the
        caller's own work between chunks (pushing to a channel layer) is not the worker's fault.
        """
        if self.response.content_length is not None and self.response.content_length > self.max_bytes:
            raise self.too_large()
        received = 0
        with failures_reported(self.worker, self.timeout):
            async for chunk in self.response.content.iter_any():
                if self.time_to_first_byte is None:
                    self.time_to_first_byte = time.monotonic() - self.started
                received += len(chunk)
                if received > self.max_bytes:
                    raise self.too_large()
                yield chunk

    async def read(self) -> bytes:
        """Return the whole body."""
        return b"".join([chunk async for chunk in self.chunks()])

    async def json(self):
        """Return the whole body parsed as JSON."""
        body = await self.read()
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise malformed(self.worker, f"not JSON ({exc})") from exc

    async def lines(self) -> AsyncIterator[bytes]:
        """Yield each non-blank line of a streamed body (NDJSON, SSE), without its line ending."""
        pending = bytearray()
        async for chunk in self.chunks():
            pending += chunk
            # Splitting only when a newline arrived keeps a long line linear, not quadratic.
            if b"\n" not in chunk:
                continue
            *complete, rest = pending.split(b"\n")
            pending = rest
            for line in complete:
                line = line.strip()
                if line:
                    yield bytes(line)
        if pending.strip():
            yield bytes(pending.strip())

    async def streamed_answer(
        self, parse_line: Callable[[bytes], tuple[str, bool]], *, on_chunk: ChunkCallback | None, end_marker: str
    ) -> ModelAnswer:
        """Collect a streamed answer, passing each piece of text to `on_chunk` as it arrives.

        `parse_line` returns the text a line adds and whether it is the last line; a stream
        that stops before its last line was cut off, so it is garbage, not a short answer.
        """
        pieces = []
        async for line in self.lines():
            text, is_last = parse_line(line)
            if text:
                pieces.append(text)
                if on_chunk is not None:
                    await on_chunk(text)
            if is_last:
                return ModelAnswer(result="".join(pieces), time_to_first_byte=self.time_to_first_byte)
        raise malformed(self.worker, f"the stream ended without {end_marker}")


@contextlib.asynccontextmanager
async def post_for_answer(
    session: aiohttp.ClientSession,
    worker,
    path: str,
    payload: dict | aiohttp.FormData,
    *,
    limits: CallLimits,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[AnswerBody]:
    """POST JSON (or a multipart form) to the worker and yield its body once the status says
    it is an answer.

    The total timeout covers reading the body too, so a server that stalls mid-stream is a
    timeout like one that never answers.
    """
    timeout = aiohttp.ClientTimeout(total=limits.read_timeout, sock_connect=limits.connect_timeout)
    async with contextlib.AsyncExitStack() as stack:
        with failures_reported(worker, timeout):
            url = worker.base_url + path
            outbound.check_url(url)
            started = time.monotonic()
            if isinstance(payload, aiohttp.FormData):
                # aiohttp writes the multipart Content-Type with its boundary itself.
                data, content_headers = payload, {}
            else:
                data, content_headers = orjson.dumps(payload), {"Content-Type": "application/json"}
            response = await stack.enter_async_context(
                session.post(
                    url,
                    data=data,
                    headers={**content_headers, **(headers or {})},
                    timeout=timeout,
                    allow_redirects=False,
                )
            )
            if not 200 <= response.status < 300:
                excerpt = describe_error_body(await response.content.read(ERROR_EXCERPT_CHARS * 4))
                raise error_for_status(
                    worker, response.status, retry_after=response.headers.get("Retry-After"), excerpt=excerpt
                )
        yield AnswerBody(worker, response, limits=limits, timeout=timeout, started=started)


async def probe_status(
    session: aiohttp.ClientSession, worker, path: str, *, timeout: float, headers: dict[str, str] | None = None
) -> int:
    """GET a health route and return its status; its body is not needed (a redirect is not
    followed, so it counts as the non-200 it is)."""
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=timeout)
    url = worker.base_url + path
    with failures_reported(worker, client_timeout):
        outbound.check_url(url)
        async with session.get(url, headers=headers, timeout=client_timeout, allow_redirects=False) as response:
            return response.status


def check_vectors(worker, vectors, request: ModelRequest) -> None:
    """Refuse an embeddings answer that is not one list of numbers per input."""
    if not isinstance(vectors, list) or len(vectors) != len(request.embedding_inputs()):
        raise malformed(worker, "expected one embedding per input")
    for vector in vectors:
        if not isinstance(vector, list) or not all(isinstance(value, (int, float)) for value in vector):
            raise malformed(worker, "an embedding is not a list of numbers")


def token_counts(prompt_tokens, completion_tokens) -> dict:
    """Return a server's token counts as usage, or nothing when it did not give whole numbers."""
    if not all(isinstance(count, int) and not isinstance(count, bool) for count in (prompt_tokens, completion_tokens)):
        return {}
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}


def bearer_headers(worker) -> dict[str, str]:
    """Return the Authorization header for a worker with an API key, else nothing."""
    return {"Authorization": f"Bearer {worker.api_key}"} if worker.api_key else {}


def required_key(worker, wire_format: str) -> str:
    """Return the hosted provider key to call the worker with (pools.providers), or raise an
    auth failure without calling: the provider would refuse, and a key is the operator's to give."""
    key = providers.provider_key(wire_format, worker.api_key)
    if not key:
        raise ModelServerError(f"{worker.name}: {providers.missing_key_message(wire_format)}", kind="auth")
    return key

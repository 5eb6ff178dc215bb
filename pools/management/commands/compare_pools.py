"""Compare two pool aliases (A/B) on latency, error rate and recovery time from recorded attempts."""
import json

from django.core.management.base import BaseCommand, CommandError

from pools.comparison import compare_pools
from pools.models import PoolAlias
from rentahal.errors import BrokerError

ROWS = [
    ("strategies", "strategy"),
    ("attempts", "attempts"),
    ("answered", "answered"),
    ("error_rate", "error rate"),
    ("latency_p50", "latency p50 (s)"),
    ("latency_p90", "latency p90 (s)"),
    ("latency_p99", "latency p99 (s)"),
    ("latency_mean", "latency mean (s)"),
    ("recoveries", "recoveries"),
    ("recovery_mean", "recovery mean (s)"),
    ("recovery_max", "recovery max (s)"),
]


def shown(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return ",".join(value) or "-"
    return str(value)


class Command(BaseCommand):
    help = "Compare two pool aliases, e.g. `compare_pools '$CHAT_A' '$CHAT_B' --hours 24`."

    def add_arguments(self, parser):
        parser.add_argument("a")
        parser.add_argument("b")
        parser.add_argument("--realm", help="Only the aliases in this realm.")
        parser.add_argument("--hours", type=float, help="Only the last N hours.")
        parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

    def handle(self, *args, **options):
        unknown = [name for name in (options["a"], options["b"]) if not PoolAlias.objects.filter(name=name).exists()]
        if unknown:
            raise CommandError(f"No pool alias named {', '.join(unknown)}.")
        try:
            report = compare_pools(options["a"], options["b"], realm=options["realm"], hours=options["hours"])
        except BrokerError as exc:
            raise CommandError(exc.message) from None
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
            return
        a, b = report["a"], report["b"]
        width = max(len(a["pool"]), len(b["pool"]), 12)
        self.stdout.write(f"{'':20} {a['pool']:>{width}} {b['pool']:>{width}}")
        for key, label in ROWS:
            self.stdout.write(f"{label:20} {shown(a[key]):>{width}} {shown(b[key]):>{width}}")

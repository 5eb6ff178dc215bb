"""Start an RQ worker on the queues of the named realms (all realms when none are named)."""
import logging

from django.core.management.base import BaseCommand, CommandError

from realms.models import Realm
from realms.positions import start_announcing
from rentahal.queues import get_queue
from rentahal.supervision import make_forks_die_with_this_process
from rentahal.worker import ConcurrentWorker, RealmSimpleWorker

logger = logging.getLogger(__name__)

# A streamed answer holds its job for as long as the model talks (seconds), so a realm worker
# must hold many at once: 1,024 idle-waiting jobs cost about 200 MiB and no CPU. The caps that
# protect model servers and users are per server (`max_concurrency`, DEFAULT_WORKER_CONCURRENCY)
# and per user (MAX_QUERIES_PER_USER_IN_FLIGHT), not this.
DEFAULT_CONCURRENCY = 1024


class Command(BaseCommand):
    help = "Run an RQ worker for the queues of the given realms, e.g. `run_realm_worker '$CHAT'`."

    def add_arguments(self, parser):
        parser.add_argument("realms", nargs="*", help="Realm names such as $CHAT; all realms if omitted.")
        parser.add_argument("--burst", action="store_true", help="Exit once the queues are empty.")
        parser.add_argument("--name", help="Worker name shown in RQ's registries.")
        parser.add_argument(
            "--concurrency", type=int, default=DEFAULT_CONCURRENCY,
            help=f"Jobs in flight in this process (default {DEFAULT_CONCURRENCY}); 1 runs RQ's stock SimpleWorker.",
        )
        parser.add_argument(
            "--shutdown-grace", type=float, default=20.0,
            help="Seconds jobs in flight get to finish on SIGTERM before they are requeued.",
        )

    def handle(self, *args, **options):
        names = options["realms"]
        realms = list(Realm.objects.filter(name__in=names) if names else Realm.objects.all())
        unknown = set(names) - {realm.name for realm in realms}
        if unknown:
            raise CommandError(f"Unknown realm(s): {', '.join(sorted(unknown))}")
        if not realms:
            raise CommandError("There are no realms; run `manage.py migrate` first.")
        # RQ's scheduler is a forked process: it must not outlive a worker killed with SIGKILL.
        make_forks_die_with_this_process()
        queues = [get_queue(realm.queue_name) for realm in realms]
        if options["concurrency"] > 1:
            worker = ConcurrentWorker(
                queues, connection=queues[0].connection, name=options["name"],
                concurrency=options["concurrency"], shutdown_grace=options["shutdown_grace"],
            )
        else:
            # SimpleWorker runs jobs in this process: a fork per job would copy Django's open
            # database connections into children and costs a third of the throughput.
            worker = RealmSimpleWorker(queues, connection=queues[0].connection, name=options["name"])
        logger.info("worker %s serving %s", worker.name, ", ".join(queue.name for queue in queues))
        # The queries waiting in these queues are told when their place changes.
        stop_announcing = start_announcing([realm.name for realm in realms])
        try:
            worker.work(burst=options["burst"], with_scheduler=True)
        finally:
            stop_announcing.set()

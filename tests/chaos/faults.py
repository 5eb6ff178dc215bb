"""The faults of a chaos run: a seeded schedule, and what each one does to the run's own
processes and stores. Every fault is recorded as a window of wall-clock time, from its
start to the moment its cause is gone (the process restarted, the store answering, the
move finished), which is what the wait bound is measured from (checks.py)."""
import asyncio
import dataclasses
import random
import subprocess
import time

from realms.management.commands.run_broker import manage
from tests.chaos.broker import Broker
from tests.chaos.stores import OwnPostgres, OwnRedis

KINDS = ("kill_worker", "restart_redis", "move_shard", "restart_postgres", "flood")
# One round of every fault per this many seconds of run (at least one round).
ROUND_SECONDS = 60.0
# Faults happen in this part of the run, so the last is recovered from while queries still arrive.
ACTIVE_PART = (0.05, 0.8)
# How long a restarted store stays down.
DOWN_SECONDS = (2.0, 4.0)


@dataclasses.dataclass
class Fault:
    kind: str
    at: float  # run seconds
    detail: str = ""
    victim: str = ""  # the process a kill_worker fault killed
    start: float | None = None  # wall clock
    end: float | None = None
    error: str = ""


def schedule(seed: int, duration: float) -> list[Fault]:
    """Return the run's faults in time order: every kind once per round, in a seeded order,
    each at a seeded moment of its own slot (slots never overlap)."""
    rng = random.Random(f"faults-{seed}")
    rounds = max(1, round(duration / ROUND_SECONDS))
    first, last = (part * duration for part in ACTIVE_PART)
    slot = (last - first) / (rounds * len(KINDS))
    faults = []
    for number in range(rounds):
        kinds = list(KINDS)
        rng.shuffle(kinds)
        for position, kind in enumerate(kinds):
            begins = first + (number * len(KINDS) + position) * slot
            faults.append(Fault(kind, at=round(begins + rng.uniform(0.0, 0.4) * slot, 2)))
    return faults


class FaultRunner:
    def __init__(self, broker: Broker, postgres: OwnPostgres, redis: OwnRedis, *, seed: int, clock, prefix: str, shards: list[str]):
        self.broker = broker
        self.postgres = postgres
        self.redis = redis
        self.rng = random.Random(f"fault-details-{seed}")
        self.clock = clock
        self.prefix = prefix
        self.shards = shards
        self.prefix_shard = None

    async def run(self, faults: list[Fault]) -> None:
        for fault in faults:
            await asyncio.sleep(max(0.0, fault.at - self.clock()))
            fault.start = time.time()
            try:
                await getattr(self, fault.kind)(fault)
            except Exception as exc:  # a fault that could not be caused is reported, not hidden
                fault.error = f"{type(exc).__name__}: {exc}"[:300]
            if fault.end is None:
                fault.end = time.time()

    async def kill_worker(self, fault: Fault) -> None:
        """SIGKILL a realm worker mid-run (chat, the busiest, twice as often); it is
        restarted by the supervisor, as run_broker restarts it."""
        realm = self.rng.choice(["$CHAT", "$CHAT", "$VISION"])
        worker = self.broker.realm_workers[realm]
        fault.detail = f"{realm} worker pid {worker.process.pid}"
        fault.victim = worker.name
        worker.kill()
        while not worker.is_alive():
            await asyncio.sleep(0.1)

    async def restart_redis(self, fault: Fault) -> None:
        """Kill Redis and start it again empty, after a few seconds down."""
        down = self.rng.uniform(*DOWN_SECONDS)
        fault.detail = f"down {down:.1f} s, data lost"
        self.redis.kill()
        await asyncio.sleep(down)
        await asyncio.to_thread(self.redis.start)

    async def restart_postgres(self, fault: Fault) -> None:
        """Stop Postgres (fast shutdown: every connection cut) and start it again."""
        down = self.rng.uniform(*DOWN_SECONDS)
        fault.detail = f"down {down:.1f} s"
        await asyncio.to_thread(self.postgres.stop)
        await asyncio.sleep(down)
        await asyncio.to_thread(self.postgres.start)

    async def move_shard(self, fault: Fault) -> None:
        """Move the run's busiest guid prefix to another shard with `move_shard_prefix`;
        a move that fails is resumed, as an operator would."""
        source = self.prefix_shard or self.shards[int(self.prefix, 16) % len(self.shards)]
        target = next(shard for shard in self.shards if shard != source)
        fault.detail = f"prefix {self.prefix} {source} -> {target}"
        moved = await asyncio.to_thread(self.mover, self.prefix, target)
        if moved.returncode != 0:
            fault.detail += f"; the move failed ({moved.stdout.strip().splitlines()[-1:]}), resumed"
            moved = await asyncio.to_thread(self.mover, self.prefix, "--resume")
        fences = [line for line in moved.stdout.splitlines() if "fence held" in line]
        if fences:
            fault.detail += f"; {fences[-1].strip()}"
        if moved.returncode != 0:
            raise RuntimeError(f"move_shard_prefix failed: {moved.stdout[-500:]}")
        self.prefix_shard = target

    def mover(self, *args: str) -> subprocess.CompletedProcess:
        with open(self.broker.run_dir / "shard-moves.log", "a") as log:
            done = subprocess.run(
                manage("move_shard_prefix", *args), env=self.broker.env, capture_output=True, text=True, timeout=300,
            )
            log.write(done.stdout + done.stderr)
        return subprocess.CompletedProcess(done.args, done.returncode, done.stdout + done.stderr)

    async def flood(self, fault: Fault) -> None:
        """The flooding user's queries are planned for this moment (run.py); nothing to do here."""
        fault.detail = "one user submits its whole backlog at once"

"""The runtime state a selection reads: each member's health, blacklist, cooldown, in-flight
count and EWMAs, and each pool's ticket and affinity (pools.state reads it from Redis)."""
from __future__ import annotations

import dataclasses

# A worker's health score starts here and a healthy probe never lifts it higher.
MAX_HEALTH = 100.0


@dataclasses.dataclass
class MemberState:
    in_flight: int = 0
    cooldown_until: float = 0.0
    cooldown_kind: str = ""
    latency: float | None = None  # EWMA of time to first byte, seconds
    success: float | None = None  # EWMA of 1 (answered) / 0 (server fault)
    health_score: float = MAX_HEALTH
    is_blacklisted: bool = False  # by the health rules (score 0); the operator's switch is WorkerInfo's


@dataclasses.dataclass
class SharedState:
    """The runtime state every process shares (read from Redis in one round trip)."""

    now: float
    members: dict[str, MemberState] = dataclasses.field(default_factory=dict)
    tickets: dict[int, int] = dataclasses.field(default_factory=dict)  # pool id -> round-robin ticket
    affinity: dict[int, str] = dataclasses.field(default_factory=dict)  # pool id -> remembered worker
    affinity_key: str = ""  # the conversation (else the user) the affinity is remembered for

    def of(self, worker: str) -> MemberState:
        return self.members.get(worker) or MemberState()

"""Restart decisions for the driver's watch loop: when a stage actor's loop ends, go on (Ray
is bringing the actor back) or give up, and say why. Pure, so every decision is unit-tested.

Two ways an actor goes away. Its process died (killed, out of memory, node lost): Ray restarts
it, its leased work goes back to the pool, and its loop is started again a second later; after
`max_restarts` deaths the run fails. Or it is unreachable while Ray decides whether its node is
dead (missed heartbeats): every call fails with ActorUnavailableError, which is not a death.
The loop is asked again every couple of seconds; one such incident counts as one restart, and
an actor still unreachable after `unavailable_limit_s` fails the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# How a loop ended, as the driver saw it.
RETURNED, UNAVAILABLE, DIED, RAISED = "returned", "unavailable", "died", "raised"


@dataclass
class Supervisor:
    max_restarts: int = 5
    unavailable_limit_s: float = 300.0
    died_retry_s: float = 1.0
    unavailable_retry_s: float = 2.0
    settled_after_s: float = 10.0     # running this long again ends an unavailability incident
    restarts: dict[str, int] = field(default_factory=dict)
    unavailable_since: dict[str, float] = field(default_factory=dict)
    relaunch_at: dict[str, float] = field(default_factory=dict)
    relaunched: dict[str, float] = field(default_factory=dict)

    def ended(self, name: str, how: str, error: str, now: float) -> tuple[str, bool]:
        """A loop ended while the run was going. Returns (failure, new_incident): failure is
        '' when the loop will be started again (see `due`), else why the run must stop;
        new_incident says whether this is worth a log line."""
        if how == RETURNED:
            return f"{name} stopped unexpectedly", True
        if how == RAISED:
            return f"{name} failed: {error}", True
        if how == UNAVAILABLE:
            new = name not in self.unavailable_since
            if new:
                self.restarts[name] = self.restarts.get(name, 0) + 1
            since = self.unavailable_since.setdefault(name, now)
            if now - since < self.unavailable_limit_s:
                self.relaunch_at[name] = now + self.unavailable_retry_s
                return "", new
            return (f"{name} still unavailable after {self.unavailable_limit_s:.0f} s: "
                    f"{error}"), True
        self.restarts[name] = self.restarts.get(name, 0) + 1
        if self.restarts[name] <= self.max_restarts:
            self.relaunch_at[name] = now + self.died_retry_s
            return "", True
        return f"{name} died {self.restarts[name]} times: {error}", True

    def due(self, now: float) -> list[str]:
        """Loops to start again now; an actor running again for a while ends its incident."""
        ready = [name for name, at in self.relaunch_at.items() if at <= now]
        for name in ready:
            del self.relaunch_at[name]
            self.relaunched[name] = now
        for name in [n for n in self.unavailable_since if n not in self.relaunch_at
                     and now - self.relaunched.get(n, 0.0) > self.settled_after_s]:
            del self.unavailable_since[name]
        return ready

    def next_due(self, now: float) -> float | None:
        """Seconds until the next relaunch (None: nothing waits)."""
        return max(0.0, min(self.relaunch_at.values()) - now) if self.relaunch_at else None

    def counted(self) -> dict[str, int]:
        return {k: v for k, v in self.restarts.items() if v}

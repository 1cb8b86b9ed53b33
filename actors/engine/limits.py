"""Rate limits, back-off and budget as plain objects with an explicit clock.

The gate actor (gate.py) holds one `ModelLimiter` per API model and one `Budget` for the run, so
every actor on every node draws from the same allowance. Kept pure so the arithmetic (windows,
refunds, back-off and recovery) is unit-tested with a fake clock, without Ray or a server.

Each per-minute limit is a sliding 60 s window: what started in the last 60 s never exceeds the
limit, whatever the timing (a token bucket lets a full bucket plus a minute's refill through in
the first minute). A pacing rule keeps the window from being spent in one burst: within any
`period / PACE_SLICES` seconds at most twice that slice's share may start.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from actors.config import Limits, Price

PERIOD_S = 60.0
GUARD_S = 0.5               # a grant's request reaches the provider a little later, with jitter:
                            # the window is kept this much longer so the provider's minute holds
PACE_SLICES = 12            # pacing looks at 5 s slices of the minute
MIN_FACTOR = 1 / 16         # back-off never slows a model below this share of its limits
RECOVER_EVERY_S = 5.0       # without a 429 for this long, the rate grows again
RECOVER_STEP = 0.1          # ... by this share of the full limit


class _Entry:
    __slots__ = ("amount", "live", "t")

    def __init__(self, t: float, amount: float) -> None:
        self.t, self.amount, self.live = t, amount, True


class Window:
    """Amounts started in the last `period` seconds, with room checks and refunds."""

    def __init__(self, limit: float, period: float = PERIOD_S + GUARD_S) -> None:
        self.limit, self.period = limit, period
        self.entries: deque[_Entry] = deque()   # oldest first
        self.total = 0.0

    def _expire(self, now: float) -> None:
        while self.entries and self.entries[0].t <= now - self.period:
            old = self.entries.popleft()
            old.live = False
            self.total -= old.amount

    def used(self, now: float) -> float:
        self._expire(now)
        return self.total

    def wait(self, now: float, amount: float, factor: float = 1.0) -> float:
        """Seconds until `amount` more fits under limit x factor (0: it fits now).

        An amount larger than the whole limit waits for an empty window and then goes alone,
        so one oversized request cannot block a model for ever.
        """
        self._expire(now)
        limit = self.limit * factor
        need = min(amount, limit)
        whole = self._wait(now, self.total - (limit - need), self.period, iter(self.entries))
        span = self.period / PACE_SLICES
        recent = []
        for e in reversed(self.entries):
            if e.t <= now - span:
                break
            recent.append(e)
        in_span = sum(e.amount for e in recent)
        pace_cap = max(2 * limit / PACE_SLICES, need)
        paced = self._wait(now, in_span - (pace_cap - need), span, reversed(recent))
        return max(whole, paced)

    @staticmethod
    def _wait(now: float, excess: float, span: float, oldest_first: Iterable[_Entry]) -> float:
        """Seconds until entries leaving the span (oldest first) have freed `excess`."""
        if excess <= 1e-9:
            return 0.0
        for e in oldest_first:
            excess -= e.amount
            if excess <= 1e-9:
                return max(e.t + span - now, 1e-3)
        return span

    def add(self, now: float, amount: float) -> _Entry:
        entry = _Entry(now, amount)
        self.entries.append(entry)
        self.total += amount
        return entry

    def refund(self, entry: _Entry, amount: float) -> None:
        """Give back part of a reservation (output reserved at max_tokens, used fewer)."""
        amount = min(amount, entry.amount)
        entry.amount -= amount
        if entry.live:
            self.total -= amount


@dataclass
class Grant:
    id: int
    holder: str
    input_tokens: int
    output_tokens: int
    entries: dict[str, _Entry] = field(default_factory=dict)
    cost: float = 0.0


class ModelLimiter:
    """Requests, input tokens and output tokens per minute, requests in flight, and an
    additive-increase / multiplicative-decrease factor that a 429 halves and time restores."""

    def __init__(self, limits: Limits) -> None:
        self.max_in_flight = limits.max_in_flight
        self.windows = {name: Window(limit) for name, limit in (
            ("requests", limits.requests_per_minute),
            ("input_tokens", limits.input_tokens_per_minute),
            ("output_tokens", limits.output_tokens_per_minute)) if limit}
        self.in_flight: dict[int, Grant] = {}
        self.factor = 1.0
        self.paused_until = 0.0
        self.last_throttle = -math.inf
        self.throttles = 0
        self.peak_in_flight = 0

    def current_factor(self, now: float) -> float:
        """The back-off factor, recovered by RECOVER_STEP for each quiet RECOVER_EVERY_S."""
        if self.factor < 1.0:
            quiet = now - self.last_throttle
            steps = int(quiet // RECOVER_EVERY_S)
            if steps:
                self.factor = min(1.0, self.factor + steps * RECOVER_STEP)
                self.last_throttle += steps * RECOVER_EVERY_S
        return self.factor

    def wait(self, now: float, input_tokens: int, output_tokens: int) -> float:
        """Seconds until a request of this size may start (0: now). inf: wait for a release."""
        if now < self.paused_until:
            return self.paused_until - now
        if len(self.in_flight) >= self.max_in_flight:
            return math.inf
        factor = self.current_factor(now)
        amounts = {"requests": 1, "input_tokens": input_tokens, "output_tokens": output_tokens}
        return max([w.wait(now, amounts[k], factor) for k, w in self.windows.items()],
                   default=0.0)

    def take(self, now: float, grant: Grant) -> None:
        amounts = {"requests": 1, "input_tokens": grant.input_tokens,
                   "output_tokens": grant.output_tokens}
        grant.entries = {k: w.add(now, amounts[k]) for k, w in self.windows.items()}
        self.in_flight[grant.id] = grant
        self.peak_in_flight = max(self.peak_in_flight, len(self.in_flight))

    def release(self, grant_id: int, input_tokens: int | None = None,
                output_tokens: int | None = None) -> Grant | None:
        """The request ended: refund what the reservation overestimated."""
        grant = self.in_flight.pop(grant_id, None)
        if grant is None:
            return None
        for key, used, reserved in (("input_tokens", input_tokens, grant.input_tokens),
                                    ("output_tokens", output_tokens, grant.output_tokens)):
            if key in grant.entries and used is not None and used < reserved:
                self.windows[key].refund(grant.entries[key], reserved - used)
        return grant

    def release_holder(self, holder: str) -> list[Grant]:
        """An actor died: its requests are gone, and so are their slots."""
        gone = [g for g in self.in_flight.values() if g.holder == holder]
        for g in gone:
            self.in_flight.pop(g.id)
        return gone

    def throttled(self, now: float, retry_after: float | None) -> None:
        """A 429: nobody sends until retry-after has passed, and the rate halves (once per
        second at most, since many requests in flight see the same 429 together)."""
        self.throttles += 1
        self.paused_until = max(self.paused_until, now + (retry_after or 1.0))
        if now - self.last_throttle >= 1.0 or self.factor >= 1.0:
            self.factor = max(MIN_FACTOR, self.current_factor(now) / 2)
        self.last_throttle = now

    def stats(self, now: float) -> dict[str, float]:
        return {"in_flight": len(self.in_flight), "peak_in_flight": self.peak_in_flight,
                "rate_factor": round(self.current_factor(now), 3), "throttles": self.throttles,
                **{f"{k}_last_minute": round(w.used(now), 1)
                   for k, w in self.windows.items()}}


def cost_usd(price: Price, input_tokens: int, output_tokens: int, cache_read: int = 0,
             cache_write: int = 0) -> float:
    """What one call cost. `input_tokens` excludes cached ones (Anthropic reports them apart;
    the OpenAI provider reports its cached tokens as cache reads too)."""
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok
            + cache_read * price.cache_read + cache_write * price.cache_write) / 1e6


def cache_saving_usd(price: Price, cache_read: int, cache_write: int) -> float:
    """What prompt caching saved against sending the same tokens uncached (negative while the
    writes cost more than the reads have saved)."""
    return (cache_read * (price.input_per_mtok - price.cache_read)
            - cache_write * (price.cache_write - price.input_per_mtok)) / 1e6


class Budget:
    """The run's spending cap. A request may start only if what is spent, plus the worst case
    of what is in flight, plus its own worst case stays within the cap; so a run stops at
    the cap, not past it by a cluster's worth of requests."""

    def __init__(self, max_usd: float | None, spent: float = 0.0) -> None:
        self.max_usd = max_usd
        self.spent = spent
        self.reserved = 0.0
        self.refused = 0

    def reserve(self, worst: float) -> str:
        """'ok' (reserved), 'wait' (fits once requests in flight have settled, since they
        rarely cost their worst case), or 'refused' (it cannot fit: the budget is reached)."""
        if self.max_usd is None or self.spent + self.reserved + worst <= self.max_usd:
            self.reserved += worst
            return "ok"
        if self.reserved > 0 and self.spent + worst <= self.max_usd:
            return "wait"
        self.refused += 1
        return "refused"

    def settle(self, worst: float, actual: float) -> None:
        self.reserved = max(0.0, self.reserved - worst)
        self.spent += actual

    @property
    def exhausted(self) -> bool:
        return self.refused > 0

    def stats(self) -> dict[str, float | None]:
        return {"max_usd": self.max_usd, "spent_usd": round(self.spent, 6),
                "reserved_usd": round(self.reserved, 6), "refused_requests": self.refused}

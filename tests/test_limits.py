"""Rate windows, back-off, budget and cost arithmetic, with a fake clock (no Ray, no server)."""

from __future__ import annotations

import math

import pytest

from actors.config import Limits, Price
from actors.engine.limits import (
    GUARD_S,
    MIN_FACTOR,
    Budget,
    Grant,
    ModelLimiter,
    Window,
    cache_saving_usd,
    cost_usd,
)
from actors.engine.usage import spent_usd, summarize


def drive(lim: ModelLimiter, seconds: float, step: float = 0.05, in_tok: int = 10,
          out_tok: int = 10) -> list[float]:
    """Start a request whenever the limiter allows, releasing each at once; start times."""
    now, starts, gid = 0.0, [], 0
    while now < seconds:
        if lim.wait(now, in_tok, out_tok) == 0:
            gid += 1
            lim.take(now, Grant(gid, "t", in_tok, out_tok))
            lim.release(gid, in_tok, out_tok)
            starts.append(now)
        else:
            now += step
    return starts


def max_in_any_window(starts: list[float], span: float) -> int:
    return max(sum(1 for t in starts if s <= t < s + span) for s in starts)


def test_requests_per_minute_hold_in_every_sliding_minute():
    starts = drive(ModelLimiter(Limits(requests_per_minute=60)), 240)
    # Every 60 s plus the guard: requests that reach the provider up to GUARD_S late still
    # fit its minute.
    assert max_in_any_window(starts, 60.0 + GUARD_S) <= 60
    assert len(starts) >= 4 * 60 - 12  # and the allowance is used, not wasted
    # Paced: never the whole minute in one burst.
    assert max_in_any_window(starts, 5.0) <= 10


def test_token_limits_refund_what_the_reservation_overestimated():
    lim = ModelLimiter(Limits(output_tokens_per_minute=1000))
    lim.take(0.0, Grant(1, "a", 0, 1000))       # reserved at max_tokens
    assert lim.wait(0.0, 0, 1000) > 0
    lim.release(1, 0, 100)                     # used only 100
    assert lim.windows["output_tokens"].used(0.0) == pytest.approx(100)
    assert lim.wait(0.1, 0, 60) == 0           # within the 5 s pace share (166) too


def test_an_oversized_request_waits_for_an_empty_window_then_goes():
    w = Window(100, period=60.0)
    w.add(0.0, 50)
    assert w.wait(1.0, 500) == pytest.approx(59.0)
    assert w.wait(60.5, 500) == 0


def test_in_flight_cap_waits_for_a_release():
    lim = ModelLimiter(Limits(max_in_flight=2))
    lim.take(0.0, Grant(1, "a", 1, 1))
    lim.take(0.0, Grant(2, "b", 1, 1))
    assert math.isinf(lim.wait(0.0, 1, 1))
    lim.release(1)
    assert lim.wait(0.0, 1, 1) == 0
    assert lim.release_holder("b")[0].id == 2 and not lim.in_flight


def test_a_429_pauses_halves_the_rate_then_recovers():
    lim = ModelLimiter(Limits(requests_per_minute=600))
    lim.throttled(10.0, 2.0)
    assert lim.wait(10.5, 1, 1) == pytest.approx(1.5)
    assert lim.current_factor(11.0) == 0.5
    lim.throttled(11.2, 1.0)                   # more than a second later: halves again
    assert lim.current_factor(11.3) == 0.25
    lim.throttled(11.4, 1.0)                   # the same burst of 429s: no further cut
    assert lim.current_factor(11.5) == 0.25
    assert lim.current_factor(11.4 + 5 * 8) == 1.0  # quiet for 40 s: back to the full rate
    for k in range(20):
        lim.throttled(100.0 + 2 * k, 0.1)
    assert lim.current_factor(140.0) >= MIN_FACTOR


def test_back_off_slows_the_sending_rate():
    # At the full 120 a minute, pacing lets 2 * 120 / 12 = 20 start in 4 s.
    assert len(drive(ModelLimiter(Limits(requests_per_minute=120)), 4.0)) == 20
    lim = ModelLimiter(Limits(requests_per_minute=120))
    lim.throttled(0.0, 0.1)
    lim.throttled(1.5, 0.1)                    # halved twice: 30 a minute, paused to 1.6 s
    starts = drive(lim, 4.0)                   # too short for any recovery (5 s)
    assert len(starts) == 2 * 30 // 12 and starts[0] >= 1.6


def test_budget_refuses_what_could_pass_the_cap():
    b = Budget(1.0, spent=0.5)
    assert b.reserve(0.3) == "ok"
    assert b.reserve(0.3) == "wait"            # fits once the one in flight has settled
    b.settle(0.3, 0.1)
    assert b.spent == pytest.approx(0.6) and b.reserve(0.3) == "ok" and not b.exhausted
    assert b.reserve(0.5) == "refused" and b.exhausted  # 0.6 spent + 0.5 > 1.0 whatever settles
    assert Budget(None).reserve(1e9) == "ok"


def test_cost_and_cache_saving():
    price = Price(input_per_mtok=3.0, output_per_mtok=15.0)
    assert cost_usd(price, 1_000_000, 100_000) == pytest.approx(4.5)
    # Cache reads at 0.1x, writes at 1.25x input by default.
    assert cost_usd(price, 0, 0, cache_read=1_000_000) == pytest.approx(0.3)
    assert cost_usd(price, 0, 0, cache_write=1_000_000) == pytest.approx(3.75)
    assert cache_saving_usd(price, 1_000_000, 100_000) == pytest.approx(2.7 - 0.075)


def test_usage_totals_per_stage_and_model():
    usage = {"propose:m1": {"requests": 2, "prompt_tokens": 10, "cost_usd": 0.5,
                            "faults": {"http_429": 1}},
             "classify:m2": {"requests": 3, "cache_read_tokens": 1_000_000, "cost_usd": 0.25,
                             "faults": {"http_429": 2, "timeout": 1}}}
    out = summarize(usage, {"m2": Price(input_per_mtok=1.0)})
    assert out["totals"]["all"]["requests"] == 5
    assert out["totals"]["by_stage"]["classify"]["cost_usd"] == 0.25
    assert out["totals"]["by_model"]["m1"]["prompt_tokens"] == 10
    assert out["faults"] == {"http_429": 3, "timeout": 1}
    assert out["prompt_cache"]["saved_usd"] == pytest.approx(0.9)
    assert spent_usd(usage) == pytest.approx(0.75)

"""The API backend without Ray or a network: a real Gate behind a stand-in for Ray's actor
handle, and a stand-in provider. Grants are asked per batch, the cluster-wide cap holds,
settles free the slots and carry cost and faults, and a refused budget cancels the request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.config import ApiModel
from actors.engine.gate import Gate
from actors.providers.client import BUDGET_REACHED, ApiBackend
from actors.providers.llm import Completion, Request


class Handle:
    """`handle.method.remote(...)` as Ray's actor handle offers it, on a local object; counts
    the calls, as the Ray calls they stand for."""

    def __init__(self, obj: Any) -> None:
        self.obj, self.calls = obj, []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.obj, name)
        handle = self

        class Remote:
            @staticmethod
            def remote(*args: Any) -> Any:
                handle.calls.append(name)
                result = method(*args)
                if asyncio.iscoroutine(result):
                    return asyncio.ensure_future(result)
                done = asyncio.get_running_loop().create_future()
                done.set_result(result)
                return done

        return Remote


class Provider:
    """Answers after a short wait; tracks how many requests are under way at once."""

    def __init__(self, name: str = "", starts: list[str] | None = None,
                 latency: float = 0.02) -> None:
        self.now = self.peak = 0
        self.latency = latency
        self.name, self.starts = name, starts if starts is not None else []

    async def complete(self, req: Request) -> Completion:
        self.starts.append(self.name)
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(self.latency)
        self.now -= 1
        return Completion("ok", "stop", "m", prompt_tokens=100, completion_tokens=10,
                          faults={"http_429": 1})


def _backend(max_in_flight: int = 2, max_cost: float | None = None) -> tuple[ApiBackend,
                                                                              Handle, Provider]:
    conf = ApiModel(provider="openai_compatible", model="m", base_url="http://x/v1",
                    limits={"max_in_flight": max_in_flight},
                    price={"input_per_mtok": 1.0, "output_per_mtok": 2.0})
    gate = Handle(Gate({"api": conf}, max_cost))
    backend = ApiBackend(conf, "api", None, gate)
    backend.bind("w", "life")
    backend._provider = Provider()
    return backend, gate, backend._provider


REQ = Request("prompt", 0.0, 1.0, max_tokens=10)


def test_a_batch_asks_the_gate_once_and_the_cap_holds():
    async def scenario():
        backend, gate, provider = _backend(max_in_flight=2)
        answers = await asyncio.gather(*[backend.complete(REQ) for _ in range(6)])
        await asyncio.sleep(0.05)  # the last settles go out
        return backend, gate, provider, answers

    backend, gate, provider, answers = asyncio.run(scenario())
    assert [a.text for a in answers] == ["ok"] * 6
    assert provider.peak == 2  # never more than the gate's cap at once
    stats = gate.obj.stats()
    assert stats["models"]["api"]["in_flight"] == 0  # every grant settled
    assert stats["faults"] == {"http_429": 6}
    assert answers[0].cost_usd == (100 * 1.0 + 10 * 2.0) / 1e6
    # 6 requests: the first ask covers the batch (2 granted); with nothing else waiting and
    # no per-minute limit or budget, each finished request hands its slot to the next.
    assert gate.calls.count("acquire_many") == 2 and gate.calls.count("settle_many") <= 3
    assert stats["models"]["api"]["requests"] == 6


def _two_holders(max_cost: float | None = None, **limits: int
                 ) -> tuple[ApiBackend, ApiBackend, Handle, list[str]]:
    conf = ApiModel(provider="openai_compatible", model="m", base_url="http://x/v1",
                    limits={"max_in_flight": 2, **limits},
                    price={"input_per_mtok": 1.0, "output_per_mtok": 2.0})
    gate = Handle(Gate({"api": conf}, max_cost))
    backends, starts = [], []
    for name in ("a", "b"):
        b = ApiBackend(conf, "api", None, gate)
        b.bind(name, "life")
        b._provider = Provider(name, starts, latency=0.1)
        backends.append(b)
    return backends[0], backends[1], gate, starts


def test_a_holder_over_its_share_gives_slots_back_when_another_waits():
    async def scenario():
        a, b, gate, starts = _two_holders()
        first = asyncio.gather(*[a.complete(REQ) for _ in range(8)])
        await asyncio.sleep(0.005)  # a holds both slots
        second = asyncio.gather(*[b.complete(REQ) for _ in range(2)])
        await asyncio.gather(first, second)
        await asyncio.sleep(0.3)  # the last reports and unused grants reach the gate
        return gate, starts

    gate, starts = asyncio.run(scenario())
    by_actor = gate.obj.stats()["models"]["api"]["requests_by_actor"]
    assert by_actor == {"a": 8, "b": 2}
    # b's requests started while a still had requests waiting: once a heard that b waited
    # (its next report, within HANDOFF_REPORT_S), a kept one slot (its share of two) and
    # gave the other back.
    last_a = len(starts) - 1 - starts[::-1].index("a")
    assert starts[:2] == ["a", "a"] and starts.index("b") < last_a, starts


@pytest.mark.parametrize("limits,max_cost", [({"requests_per_minute": 1000}, None),
                                             ({}, 100.0)])
def test_no_handoff_where_every_request_must_pass_the_gate(limits, max_cost):
    async def scenario():
        a, _, gate, _ = _two_holders(max_cost, **limits)
        await asyncio.gather(*[a.complete(REQ) for _ in range(6)])
        return gate

    gate = asyncio.run(scenario())
    assert gate.calls.count("acquire_many") >= 3  # each freed slot goes back through it


def test_a_request_the_budget_cannot_cover_is_cancelled_not_sent():
    async def scenario():
        backend, gate, provider = _backend(max_cost=1e-9)
        return await backend.complete(REQ), provider

    answer, provider = asyncio.run(scenario())
    assert answer.finish_reason == "cancelled" and answer.error == BUDGET_REACHED
    assert provider.peak == 0

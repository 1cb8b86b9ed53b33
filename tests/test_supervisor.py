"""The driver's restart decisions, and the gate as a plain class (no Ray): grants, a restarted
holder's slots freed in the same call, faults counted where they happen."""

from __future__ import annotations

import asyncio

from actors.config import ApiModel
from actors.engine.gate import Gate
from actors.engine.supervisor import DIED, RAISED, RETURNED, UNAVAILABLE, Supervisor


def test_a_dead_actor_is_relaunched_until_it_has_died_too_often():
    sup = Supervisor(max_restarts=2)
    assert sup.ended("w", DIED, "killed", now=0.0) == ("", True)
    assert sup.due(0.5) == [] and sup.due(1.0) == ["w"]
    assert sup.ended("w", DIED, "killed", now=2.0) == ("", True)
    assert sup.due(3.0) == ["w"]
    failure, _ = sup.ended("w", DIED, "killed", now=4.0)
    assert failure == "w died 3 times: killed" and sup.due(100.0) == []


def test_an_unreachable_actor_is_one_restart_per_incident_until_the_limit():
    sup = Supervisor(unavailable_limit_s=300)
    assert sup.ended("w", UNAVAILABLE, "no heartbeat", now=0.0) == ("", True)
    assert sup.next_due(0.0) == 2.0
    for t in (2.0, 4.0, 6.0):  # asked again and again: still one incident, logged once
        assert sup.due(t) == ["w"]
        assert sup.ended("w", UNAVAILABLE, "no heartbeat", now=t) == ("", False)
    assert sup.restarts == {"w": 1}
    failure, _ = sup.ended("w", UNAVAILABLE, "no heartbeat", now=301.0)
    assert failure.startswith("w still unavailable after 300 s")


def test_an_incident_ends_once_the_actor_has_run_again_for_a_while():
    sup = Supervisor()
    sup.ended("w", UNAVAILABLE, "x", now=0.0)
    sup.due(2.0)
    sup.due(13.0)  # running again for 11 s: that incident is over
    assert sup.ended("w", UNAVAILABLE, "x", now=20.0) == ("", True)
    assert sup.restarts == {"w": 2}


def test_a_loop_that_returns_or_raises_fails_the_run():
    sup = Supervisor()
    assert sup.ended("a", RETURNED, "", 0.0)[0] == "a stopped unexpectedly"
    assert sup.ended("b", RAISED, "ValueError: x", 0.0)[0] == "b failed: ValueError: x"
    assert sup.counted() == {}


def _gate(**limits):
    model = ApiModel(provider="openai_compatible", model="m", base_url="http://x/v1",
                     limits={"max_in_flight": 2, **limits})
    return Gate({"m": model}, None)


def test_a_new_life_of_a_holder_frees_what_the_old_life_held_in_the_same_call():
    async def scenario():
        gate = _gate()
        assert (await gate.acquire_many("m", "w", "life-1", [(10, 10), (10, 10)]))[0] == [1, 2]
        # The same life asking again waits: the cap of 2 is taken.
        waiting = asyncio.ensure_future(gate.acquire_many("m", "w", "life-1", [(10, 10)]))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        waiting.cancel()
        # A restarted actor (a new life) gets slots at once: the dead life's are freed.
        assert (await asyncio.wait_for(
            gate.acquire_many("m", "w", "life-2", [(10, 10)]), 1))[0] == [3]
        assert gate.stats()["models"]["m"]["in_flight"] == 1

    asyncio.run(scenario())


def test_the_gate_counts_every_request_s_faults():
    async def scenario():
        gate = _gate()
        (g1,), _ = await gate.acquire_many("m", "w", "l", [(10, 10)])
        (g2,), _ = await gate.acquire_many("m", "w", "l", [(10, 10)])
        gate.settle_many("m", "w", [
            (g1, {"prompt_tokens": 5}, "", {"http_429": 2, "timeout": 1}, "done"),
            (g2, {}, "APIError: 500", {"http_500": 3}, "done")])
        return gate.stats()

    stats = asyncio.run(scenario())
    assert stats["faults"] == {"http_429": 2, "timeout": 1, "http_500": 3}
    assert stats["models"]["m"]["faults"] == stats["faults"]
    assert stats["models"]["m"]["failures_in_row"] == 1


def test_fault_counts_over_sessions_take_recorded_kinds_once_and_add_the_gates():
    from actors.engine.summary import fault_counts

    usage = {"propose:m": {"errors": 2, "faults": {"unparseable": 3, "http_429": 1}},
             "classify:m": {"errors": 0, "faults": {"unparseable": 1}}}
    earlier = {"faults": {"http_429": 4, "unparseable": 2, "request_error": 1}}
    gate = {"faults": {"http_429": 5, "timeout": 1}}
    assert fault_counts(earlier, usage, gate) == {
        "http_429": 9, "request_error": 2, "timeout": 1, "unparseable": 4}
    # No gate (the embedded model only): the records are all there is.
    assert fault_counts(earlier, usage, {}) == {
        "http_429": 1, "request_error": 2, "unparseable": 4}

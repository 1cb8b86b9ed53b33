"""The run's provider batches as pure state (batching.py) and their durable log (batchlog.py)."""

from __future__ import annotations

from dataclasses import dataclass

from actors.config import ModelBatches, StageBatches
from actors.engine.batching import BatchBook
from actors.providers.llm import Completion, Request
from actors.rundir.batchlog import BATCH_LOG, BatchLog, read_batches


@dataclass
class Item:
    completion: Completion | None
    failure: str = ""
    message: str = ""


def req(i: int) -> Request:
    return Request(f"prompt {i}", 0.0, 1.0, 16, seed=i)


def book(max_requests: int = 3, max_wait_s: float = 10.0, max_in_flight: int = 1,
         retry: str = "batch", max_item_retries: int = 1, per_batch: int = 50_000,
         max_bytes: int = 200_000_000, size: int = 100) -> BatchBook:
    stage = StageBatches(max_requests=max_requests, max_wait_s=max_wait_s,
                         max_in_flight=max_in_flight, retry=retry,
                         max_item_retries=max_item_retries)
    return BatchBook({"classify": stage}, {"m": ModelBatches(max_requests_per_batch=per_batch,
                                                            max_bytes_per_batch=max_bytes)},
                     lambda stage, cid, r: size)


def answer(item: Item | None) -> Completion:
    if item is None or item.failure:
        return Completion("", "error", "m", error=item.failure if item else "missing")
    assert item.completion is not None
    return item.completion


def ok(text: str) -> Item:
    return Item(Completion(text, "stop", "m"))


def test_a_batch_is_due_when_full_or_when_the_oldest_has_waited_long_enough():
    b = book(max_requests=3, max_wait_s=10)
    assert b.ask("classify", "a", req(1), now=0) == "queued"
    assert b.ask("classify", "b", req(2), now=1) == "queued"
    assert b.due("classify", "m", now=5) == []
    assert b.wait_s(now=5) == 5
    assert [cid for cid, _ in b.due("classify", "m", now=10)] == ["a", "b"]
    b = book(max_requests=2)
    for i, cid in enumerate("abc"):
        b.ask("classify", cid, req(i), now=i)
    assert [cid for cid, _ in b.due("classify", "m", now=2)] == ["a", "b"]  # oldest first


def test_the_model_limits_cap_a_batch_by_requests_and_bytes():
    b = book(max_requests=10, per_batch=2)
    for i, cid in enumerate("abc"):
        b.ask("classify", cid, req(i), now=0)
    assert len(b.due("classify", "m", now=0)) == 2
    b = book(max_requests=10, max_bytes=2500, size=1000, max_in_flight=5)
    for i, cid in enumerate("abcd"):
        b.ask("classify", cid, req(i), now=0)
    assert len(b.due("classify", "m", now=100)) == 2  # 3 x 1000 bytes > 2500


def test_a_stage_keeps_at_most_max_in_flight_batches_out():
    b = book(max_requests=1, max_in_flight=1)
    b.ask("classify", "a", req(1), now=0)
    b.ask("classify", "b", req(2), now=0)
    first = b.due("classify", "m", now=0)
    assert first and b.due("classify", "m", now=0) == []  # one being submitted
    b.sent("classify", "batch_1", ["a"])
    assert b.due("classify", "m", now=0) == []            # one out
    b.ended("batch_1", {"a": ok("x")}, now=1, answer=answer)
    assert [cid for cid, _ in b.due("classify", "m", now=1)] == ["b"]


def test_the_same_request_asked_again_joins_its_batch_and_is_never_queued_twice():
    b = book(max_requests=1)
    b.ask("classify", "a", req(1), now=0)
    assert b.ask("classify", "a", req(1), now=0) == "out"    # waiting
    b.due("classify", "m", now=0)
    assert b.ask("classify", "a", req(1), now=0) == "out"    # being submitted
    b.sent("classify", "batch_1", ["a"])
    assert b.ask("classify", "a", req(1), now=0) == "out"    # in a running batch
    assert b.stats()["waiting"] == {"classify": 0}


def test_a_batch_found_in_the_log_is_joined_not_resubmitted():
    b = book()
    b.known("batch_1", "classify", ["a", "b"], ended=False)
    b.known("batch_0", "classify", ["c"], ended=True)
    assert b.ask("classify", "a", req(1), now=0) == "out"
    assert b.ask("classify", "c", req(3), now=0) == "ended"
    assert b.batch_of("c") == "batch_0"
    assert b.due("classify", "m", now=100) == []
    done = b.ended("batch_1", {"a": ok("A"), "b": ok("B")}, now=1, answer=answer)
    assert list(done.deliver) == ["a"]          # b was not asked (yet): kept for later
    assert b.ask("classify", "b", req(2), now=1) == "ready"
    assert b.take("b").text == "B"


def test_failed_items_are_requeued_then_recorded_as_errors_when_out_of_retries():
    b = book(max_requests=2, max_item_retries=1)
    b.ask("classify", "a", req(1), now=0)
    b.ask("classify", "b", req(2), now=0)
    b.sent("classify", "batch_1", [cid for cid, _ in b.due("classify", "m", now=0)])
    done = b.ended("batch_1", {"a": ok("A"), "b": Item(None, "expired")}, now=1,
                   answer=answer)
    assert list(done.deliver) == ["a"] and done.requeued == ["b"]
    assert done.failed == {"expired": 1}
    again = b.due("classify", "m", now=100)
    assert [cid for cid, _ in again] == ["b"]
    b.sent("classify", "batch_2", ["b"])
    done = b.ended("batch_2", {}, now=101, answer=answer)  # no line for b: errored
    assert done.failed == {"errored": 1} and b.take("b").finish_reason == "error"


def test_failed_items_can_be_retried_online():
    b = book(max_requests=1, retry="online")
    b.ask("classify", "a", req(1), now=0)
    b.sent("classify", "batch_1", [cid for cid, _ in b.due("classify", "m", now=0)])
    done = b.ended("batch_1", {"a": Item(None, "cancelled")}, now=1, answer=answer)
    assert done.retry_online == {"a": req(1)} and not done.deliver
    b.answered("a", Completion("online", "stop", "m"))
    assert b.take("a").text == "online"


def test_a_failed_submission_puts_the_items_back_and_a_refused_one_answers_them():
    b = book(max_requests=2)
    b.ask("classify", "a", req(1), now=0)
    b.ask("classify", "b", req(2), now=0)
    b.not_sent([cid for cid, _ in b.due("classify", "m", now=0)], now=5)
    assert len(b.due("classify", "m", now=5)) == 2
    b.refused(["a", "b"], Completion("", "cancelled", "m"))
    assert b.take("a").finish_reason == "cancelled"
    assert b.open_batches("classify") == 0


def test_the_log_keeps_submitted_batches_and_how_they_ended(tmp_path):
    log = BatchLog(tmp_path)
    log.submitted("b1", "classify", "m", ["a", "b"])
    log.submitted("b2", "propose", "m", ["c"])
    log.ended("b1", "ended", {"succeeded": 2})
    log.close()
    with open(tmp_path / BATCH_LOG, "ab") as fh:
        fh.write(b'{"event": "submitted", "batch_id": "b3", "sta')  # torn by a crash
    found = read_batches(tmp_path)
    assert list(found) == ["b1", "b2"]
    assert found["b1"]["status"] == "ended" and found["b2"]["status"] == ""
    assert found["b2"]["ids"] == ["c"]
    assert read_batches(tmp_path / "nothing-here") == {}


def _gate(max_cost: float | None = None, in_progress: int = 1):
    from actors.config import ApiModel
    from actors.engine.gate import Gate

    conf = ApiModel(provider="anthropic", model="m",
                    batches=ModelBatches(max_batches_in_progress=in_progress))
    return Gate({"m": conf}, max_cost)


def test_the_gate_holds_batches_in_progress_and_the_budget_counts_a_batch_s_worst_case():
    import asyncio

    async def scenario():
        gate = _gate(max_cost=1.0, in_progress=1)
        first = await gate.acquire_batch("m", "batcher", "life", 0.6)
        waiting = asyncio.ensure_future(gate.acquire_batch("m", "batcher", "life", 0.3))
        await asyncio.sleep(0.05)
        assert first is not None and not waiting.done()   # one batch in progress at most
        gate.settle_batch(first, 0.2, answered=3, failed={"expired": 1},
                          http_faults={"http_500": 2})
        second = await asyncio.wait_for(waiting, 2)
        assert second is not None
        stats = gate.stats()
        assert stats["models"]["m"]["faults"] == {"batch_expired": 1, "http_500": 2}
        assert stats["models"]["m"]["requests"] == 4
        assert stats["budget"]["spent_usd"] == 0.2 and stats["budget"]["reserved_usd"] == 0.3
        # A batch an earlier life submitted is counted at once, whatever is in progress.
        assert await asyncio.wait_for(gate.acquire_batch("m", "batcher", "life", 0.0, True),
                                      1) is not None
        # With room for batches: after 0.2 spent, a worst case of 0.9 can never fit; one of
        # 0.6 fits once the batch holding 0.3 has settled.
        gate.models["m"].batches.max_batches_in_progress = 5
        assert await asyncio.wait_for(gate.acquire_batch("m", "batcher", "life", 0.9),
                                      1) is None
        later = asyncio.ensure_future(gate.acquire_batch("m", "batcher", "life", 0.6))
        await asyncio.sleep(0.05)
        assert not later.done()
        gate.settle_batch(second, 0.1, answered=1, failed={})
        assert await asyncio.wait_for(later, 2) is not None

    asyncio.run(scenario())


def test_a_new_life_of_the_batcher_frees_what_the_old_one_held():
    import asyncio

    async def scenario():
        gate = _gate(in_progress=1)
        await gate.acquire_batch("m", "batcher", "life-1", 0.0)
        # The restarted batcher re-registers the batch from batches.jsonl; a new batch fits.
        return await asyncio.wait_for(gate.acquire_batch("m", "batcher", "life-2", 0.0), 1)

    assert asyncio.run(scenario()) is not None

"""The run's state without Ray or a model: the ledger's decisions, what the pool commits and in
what order, recovery from the files, and the pool's exchange (workers wait on an event)."""

from __future__ import annotations

import asyncio
import json

from actors.config import PipelineConfig
from actors.engine.ledger import Ledger
from actors.engine.pool import Pool
from actors.method.ids import prompt_id
from actors.method.prompts import Shot
from actors.providers.llm import Completion
from actors.rundir.recovery import load_state
from actors.rundir.runlog import recover
from actors.rundir.writer import Writer
from tests.test_stages import stages

SHOTS = [Shot(f"s{i}", f"Seed instruction number {i}.") for i in range(8)]
SEEDS = [{"id": "seed_0", "instruction": "Translate the sentence into French."}]
GOOD = "Input: 2 + 2\nOutput: 4\n\nInput: 3 + 3\nOutput: 6"
RAINBOW = "Explain how rainbows form in the sky."
MONEY = "Give three tips for saving money on groceries."


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def propose_unit(k, *instructions):
    text = "\n".join(f"{9 + j}. {ins}" for j, ins in enumerate(instructions)).removeprefix("9.")
    return stages().propose_outcome(k, SHOTS, Completion(text, "stop", "m")).as_dict()


def classified(task, answer="No"):
    labelled, out = stages().classify_outcome(task, Completion(answer, "stop", "m"))
    return labelled, out.as_dict()


def finished(task, text=GOOD):
    return task["id"], stages().instance_outcome(task, Completion(text, "stop", "m")).as_dict()


class Dir:
    """A run directory with its writer and a ledger read from it, as the pool holds them."""

    def __init__(self, path, target=10):
        self.path = path
        self.writer = Writer(str(path))
        st = load_state(path, self.writer.committed)
        self.ledger = Ledger(PipelineConfig(), SEEDS, target, st, stages())
        self.commit()

    def commit(self):
        self.writer.commit(self.ledger.drain())

    def admitted(self, worker="c", n=10):
        return self.ledger.take(worker, "classify", n)

    def file(self, name):
        return lines(self.path / f"{name}.jsonl")


def test_a_prompt_answered_twice_is_kept_once(tmp_path):
    d = Dir(tmp_path)
    d.ledger.sample("p", 1)
    assert d.ledger.proposed("p", [propose_unit(0, RAINBOW)]) == 1
    assert d.ledger.proposed("p", [propose_unit(0, "A different answer the second time.")]) == 0
    d.commit()
    assert [r["id"] for r in d.file("responses")] == [prompt_id(0)]
    assert [t["instruction"] for t in d.file("accepted")] == [RAINBOW]
    assert d.ledger.counts["propose"]["in"] == 1


def test_candidates_are_decided_in_prompt_order_whatever_order_they_arrive_in(tmp_path):
    d = Dir(tmp_path)
    assert [k for k, _ in d.ledger.sample("p", 2)] == [0, 1]
    d.ledger.proposed("p", [propose_unit(1, MONEY)])
    assert d.ledger.prompts.waiting() == 1 and not d.admitted()  # waits for prompt 0
    d.ledger.proposed("p", [propose_unit(0, RAINBOW)])
    assert [t["instruction"] for t in d.admitted()] == [RAINBOW, MONEY]


def test_near_duplicates_are_rejected_against_the_seeds_with_the_reason(tmp_path):
    d = Dir(tmp_path)
    d.ledger.sample("p", 1)
    d.ledger.proposed("p", [propose_unit(0, "Translate the sentence into French, please.")])
    d.commit()
    (rej,) = d.file("rejected")
    assert rej["stage"] == "dedup" and rej["rule"] == "rouge_l" and "seed_0" in rej["reason"]
    assert d.file("accepted") == []


def test_dataset_lines_follow_acceptance_order_and_counts_match_files(tmp_path):
    d = Dir(tmp_path)
    d.ledger.sample("p", 1)
    d.ledger.proposed("p", [propose_unit(0, RAINBOW, MONEY)])
    a, b = d.admitted()
    d.ledger.classified("c", [classified(a), classified(b)])
    a2, b2 = d.ledger.take("i", "instances", 2)
    d.ledger.finished("i", [finished(b2)])  # b finishes first: it waits for a
    d.commit()
    assert d.file("dataset") == [] and d.ledger.stats()["finished"] == 1
    d.ledger.finished("i", [finished(a2)])
    d.commit()
    assert [r["id"] for r in d.file("dataset")] == [a["id"], b["id"]]
    counts = recover(tmp_path).counts
    assert counts == d.ledger.counts
    assert counts["task"]["accepted"] == 2 and counts["dedup"]["accepted"] == 2
    assert counts["filter"]["accepted"] == len(d.file("candidates"))


def test_admission_stops_at_the_target_and_a_failed_task_frees_room(tmp_path):
    d = Dir(tmp_path, target=1)
    d.ledger.sample("p", 1)
    d.ledger.proposed("p", [propose_unit(0, RAINBOW, MONEY)])
    (a,) = d.admitted()  # one admitted; the other waits undecided
    assert d.ledger.capacity() == 0 and d.ledger.prompts.waiting() == 1
    assert d.ledger.sample("p", 5) == []
    d.ledger.classified("c", [classified(a)])
    (a2,) = d.ledger.take("i", "instances", 1)
    d.ledger.finished("i", [finished(a2, "")])  # no instance: the task fails
    assert [t["instruction"] for t in d.admitted()] == [MONEY]  # decided as room frees


def test_work_of_a_lost_worker_is_handed_out_again(tmp_path):
    d = Dir(tmp_path)
    assert [k for k, _ in d.ledger.sample("p-0", 2)] == [0, 1]
    assert d.ledger.lost("p-0") == {"prompts": 2, "tasks": 0}
    assert [k for k, _ in d.ledger.sample("p-1", 1)] == [0]
    d.ledger.proposed("p-1", [propose_unit(0, RAINBOW)])
    (a,) = d.admitted("c-old")
    assert d.ledger.lost("c-old")["tasks"] == 1
    assert [t["id"] for t in d.admitted("c-new")] == [a["id"]]


def test_recovery_reads_back_what_the_ledger_holds_and_rebuilds_unwritten_tasks(tmp_path):
    d = Dir(tmp_path)
    ins = [RAINBOW, MONEY, "Describe the water cycle for a child."]
    d.ledger.sample("p", 3)
    d.ledger.proposed("p", [propose_unit(0, *ins)])
    a, b, c = d.admitted()
    d.ledger.classified("c", [classified(a), classified(b)])
    (a2, b2) = d.ledger.take("i", "instances", 2)
    d.ledger.finished("i", [finished(b2)])  # answered, but waits for a
    d.ledger.proposed("p", [propose_unit(2, "Name five rivers in South America.")])
    pending = d.ledger.pending()
    d.commit()
    # a crash here: nothing in memory survives
    st = load_state(tmp_path, recover(tmp_path))
    assert st.pending() == pending == {"candidates": 1, "unclassified": 1, "classified": 1}
    assert st.prompts == {0, 2}
    assert {k: [x["cid"] for x in v] for k, v in st.pending_candidates.items()} == {
        2: [prompt_id(2) + ".0"]}
    assert [t["id"] for t, _ in st.rebuild] == [b["id"]] and st.succeeded == 1
    assert [(stage, t["id"]) for stage, t in st.open_tasks] == [
        ("instances", a["id"]), ("classify", c["id"])]
    # A new ledger (a resume) rebuilds b's line from its recorded answer, without a model,
    # and still writes it after a; prompt 1, never answered, is asked again under its number.
    d2 = Dir(tmp_path)
    assert d2.file("dataset") == []
    assert [k for k, _ in d2.ledger.sample("p", 1)] == [1]
    (a3,) = d2.ledger.take("i", "instances", 1)
    assert a3["id"] == a["id"]
    d2.ledger.finished("i", [finished(a3)])
    assert d2.ledger.finished("i", [finished(b2)]) == 0  # already answered: not taken twice
    d2.commit()
    assert [r["id"] for r in d2.file("dataset")] == [a["id"], b["id"]]
    # b's answer was committed before the crash: the resume writes its line, not its
    # response (or any other of its records) a second time.
    ids = [r["id"] for r in d2.file("responses")]
    assert len(ids) == len(set(ids)), ids


def test_a_stop_writes_finished_tasks_even_out_of_order(tmp_path):
    d = Dir(tmp_path)
    d.ledger.sample("p", 1)
    d.ledger.proposed("p", [propose_unit(0, RAINBOW, MONEY)])
    a, b = d.admitted()
    d.ledger.classified("c", [classified(b)])
    (b2,) = d.ledger.take("i", "instances", 1)
    d.ledger.finished("i", [finished(b2)])
    d.writer.commit(d.ledger.close())
    assert [r["id"] for r in d.file("dataset")] == [b["id"]]
    st = load_state(tmp_path, recover(tmp_path))
    assert [t["id"] for t in st.unclassified] == [a["id"]] and st.rebuild == []


# -- the pool: the ledger's async shell ----------------------------------------------------
def _pool(tmp_path, target=10):
    return Pool(PipelineConfig(), SEEDS, target, stages(), str(tmp_path))


def test_an_exchange_waits_for_work_and_wakes_when_it_comes(tmp_path):
    async def scenario():
        pool = _pool(tmp_path)
        waiting = asyncio.ensure_future(pool.exchange("c", "1", "classify", [], [], 8))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # nothing to classify yet: it waits, it does not return []
        (k, _), = await pool.exchange("p", "1", "propose", [], [], 1)
        await pool.exchange("p", "1", "propose", [propose_unit(k, RAINBOW)], [], 1)
        tasks = await asyncio.wait_for(waiting, 5)
        assert [t["instruction"] for t in tasks] == [RAINBOW]
        # A stop releases every waiter with no work.
        idle = asyncio.ensure_future(pool.exchange("c", "1", "classify", [], [], 8))
        await asyncio.sleep(0.05)
        pool.stop()
        assert await asyncio.wait_for(idle, 5) == []
        final = await pool.finish()
        assert final["pending"] == {"candidates": 0, "unclassified": 1, "classified": 0}
        return final

    asyncio.run(scenario())
    assert [t["instruction"] for t in lines(tmp_path / "accepted.jsonl")] == [RAINBOW]


def test_a_replaced_lifes_waiting_exchange_takes_no_work(tmp_path):
    """The call a dead process left waiting at the pool returns empty-handed once the
    worker's new life has called: the task goes to the new life, not into the void."""
    async def scenario():
        pool = _pool(tmp_path)
        orphan = asyncio.ensure_future(pool.exchange("c", "old", "classify", [], [], 8))
        await asyncio.sleep(0.05)
        fresh = asyncio.ensure_future(pool.exchange("c", "new", "classify", [], [], 8))
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(orphan, 5) == []
        (k, _), = await pool.exchange("p", "1", "propose", [], [], 1)
        await pool.exchange("p", "1", "propose", [propose_unit(k, RAINBOW)], [], 1)
        assert [t["instruction"] for t in await asyncio.wait_for(fresh, 5)] == [RAINBOW]
        await pool.finish()

    asyncio.run(scenario())


def test_the_pool_commits_in_the_background_and_the_driver_sees_tasks(tmp_path):
    async def scenario():
        pool = _pool(tmp_path, target=1)
        (k, _), = await pool.exchange("p", "1", "propose", [], [], 1)
        proposer = asyncio.ensure_future(
            pool.exchange("p", "1", "propose", [propose_unit(k, RAINBOW)], [], 1))
        (task,) = await pool.exchange("c", "1", "classify", [], [], 8)
        classifier = asyncio.ensure_future(
            pool.exchange("c", "1", "classify", [classified(task)], [], 8))
        (task,) = await pool.exchange("i", "1", "instances", [], [], 8)
        watching = asyncio.ensure_future(pool.watch(0, 10))
        instancer = asyncio.ensure_future(
            pool.exchange("i", "1", "instances", [finished(task)], [], 8))
        assert (await asyncio.wait_for(watching, 5))["tasks"] == 1
        assert not classifier.done() and not instancer.done()  # no more work: they wait
        final = await pool.finish()
        assert await classifier == [] and await instancer == []
        await proposer
        return final

    final = asyncio.run(scenario())
    assert final["tasks"] == 1 and len(lines(tmp_path / "dataset.jsonl")) == 1
    assert recover(tmp_path).counts == final["stages"]


def test_a_resumed_ledger_decides_the_candidates_left_waiting(tmp_path):
    d = Dir(tmp_path, target=1)
    d.ledger.sample("p", 1)
    d.ledger.proposed("p", [propose_unit(0, RAINBOW, MONEY)])
    d.commit()  # a stop: MONEY waits undecided
    d2 = Dir(tmp_path, target=5)  # resumed with a larger target: decided at once
    assert [t["instruction"] for t in d2.admitted()] == [RAINBOW, MONEY]
    assert d2.ledger.pending()["candidates"] == 0


def test_a_rejected_candidate_leaves_its_room_to_the_next_one_waiting(tmp_path):
    d = Dir(tmp_path, target=1)
    d.ledger.sample("p", 1)
    dup = "Translate the sentence into French, please."  # a near-copy of the seed
    d.ledger.proposed("p", [propose_unit(0, dup, RAINBOW)])
    assert [t["instruction"] for t in d.admitted()] == [RAINBOW]

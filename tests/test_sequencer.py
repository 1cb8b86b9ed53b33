"""Prompt order, lag and leases; the task board; both without Ray."""

from actors.engine.sequencer import Board, PromptSequence


def cand(k, j=0):
    return {"cid": f"prop_{k:07d}.{j}", "prompt": k, "instruction": f"task {k}.{j}"}


def test_candidates_are_decided_in_prompt_order_whatever_order_they_arrive_in():
    p = PromptSequence(lag=10)
    assert p.issue("a", new=3, limit=5) == [0, 1, 2]
    assert p.deliver("a", 2, [cand(2)]) and p.take(10) == []  # waits for 0 and 1
    p.deliver("a", 0, [cand(0), cand(0, 1)])
    assert [c["cid"] for c in p.take(10)] == ["prop_0000000.0", "prop_0000000.1"]
    p.deliver("a", 1, [])
    assert [c["prompt"] for c in p.take(10)] == [2]
    assert not p.deliver("a", 1, [cand(1)])  # a second copy is ignored


def test_no_prompt_runs_more_than_lag_ahead_of_the_decisions():
    p = PromptSequence(lag=3)
    assert p.issue("a", new=10, limit=10) == [0, 1, 2]
    p.deliver("a", 0, [cand(0)])
    assert p.through() == 0  # its candidate is not decided yet
    assert p.issue("a", new=10, limit=10) == []
    p.take(1)
    assert p.through() == 1 and p.issue("a", new=10, limit=10) == [3]


def test_a_lost_proposers_prompts_come_back_first_under_the_same_numbers():
    p = PromptSequence(lag=10)
    p.issue("a", new=2, limit=2)
    p.issue("b", new=2, limit=2)
    p.deliver("a", 0, [])
    assert p.lost("a") == 1 and p.reissue == [1]
    assert p.issue("b", new=1, limit=2) == [1, 4]
    assert p.out() == 4  # b holds 2, 3, 1 and 4
    p.deliver("b", 1, [])
    assert p.cursor == 2


def test_resuming_from_answered_prompts_and_their_undecided_candidates():
    p = PromptSequence(lag=10, done={0, 1, 3}, pending={1: [cand(1, 2)], 3: [cand(3)]})
    assert p.reissue == [2] and p.next == 4
    assert [c["cid"] for c in p.take(5)] == ["prop_0000001.2"]
    assert p.issue("a", new=0, limit=5) == [2]  # the gap is asked again even with no need
    p.deliver("a", 2, [])
    assert [c["prompt"] for c in p.take(5)] == [3]


def test_board_leases_and_gives_back_a_dead_workers_tasks():
    b = Board()
    for n in range(3):
        b.put("classify", {"id": f"t{n}"})
    assert [t["id"] for t in b.take("c", "classify", 2)] == ["t0", "t1"]
    b.labelled({"id": "t0", "is_classification": False})
    assert [t["id"] for t in b.take("i", "instances", 5)] == ["t0"]
    assert b.lost("c") == 1  # t1 was still held by the classifier
    assert [t["id"] for t in b.take("c2", "classify", 5)] == ["t1", "t2"]
    b.release("c2", ["t2"])
    assert b.settle("t0") and not b.settle("t0")
    b.labelled({"id": "t0", "is_classification": True})  # a late answer: t0 stays settled
    assert b.counts() == {"outstanding": 2, "dormant": 0, "leased": 1, "waiting_classify": 1,
                          "waiting_instances": 0}


def test_board_wakes_dormant_tasks_in_order_only_as_far_as_the_room():
    b = Board()
    for n in range(4):
        b.add("classify" if n % 2 else "instances", {"id": f"t{n}"})
    b.wake(2)
    assert b.take("w", "classify", 5) == [{"id": "t1"}]
    assert b.take("w", "instances", 5) == [{"id": "t0"}]
    assert b.settle("t0")
    b.wake(2)  # one finished: one more wakes
    assert [t["id"] for t in b.take("w", "instances", 5)] == ["t2"]
    assert b.counts()["dormant"] == 1

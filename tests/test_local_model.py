"""The embedded model's routing and read-ahead, without Ray and (but for one fake) without the
model: which replica a request goes to, what each replica reads ahead, and that reading
ahead only fills idle time."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import numpy as np
import pytest

from actors.config import LocalModel, load_config
from actors.engine.run_inputs import load_templates
from actors.method.prompts import Template
from actors.providers.client import LocalBackend
from actors.providers.llm import Completion, Request
from actors.providers.local_model import (
    LocalModelWorker,
    Prefix,
    PrefixStore,
    Saved,
    fixed_text,
    home_replica,
    pick_replica,
    prompt_text,
    stage_prefixes,
    warm_plan,
    warm_steps,
)
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def templates() -> dict[str, Template]:
    return load_templates(load_config(ROOT / "pipeline.yaml"))


def test_the_long_prefixes_have_homes_on_different_replicas():
    assert [home_replica(s, 2) for s in ("classify", "instances")] == [0, 1]
    assert [home_replica(s, 3) for s in ("classify", "instances")] == [0, 1]
    assert [home_replica(s, 1) for s in ("classify", "instances")] == [0, 0]
    assert home_replica("propose", 2) is None  # a short prefix: any replica will do


def test_a_request_goes_home_until_home_has_slack_more_than_the_least_loaded():
    assert pick_replica([3, 0], [0, 1], home=0, slack=4) == 0
    assert pick_replica([4, 0], [0, 1], home=0, slack=4) == 0
    assert pick_replica([5, 0], [0, 1], home=0, slack=4) == 1
    assert pick_replica([6, 2], [0, 1], home=0, slack=4) == 0  # measured from the least loaded


def test_without_a_live_home_the_least_loaded_highest_index_first():
    assert pick_replica([0, 2, 1], [0, 1, 2], home=None) == 0
    assert pick_replica([0, 0, 1], [0, 1, 2], home=None) == 1
    assert pick_replica([0, 0, 0], [0, 1, 2], home=None) == 2
    assert pick_replica([0, 3, 1], [1, 2], home=0) == 2  # home lost: never sent there


def test_each_step_is_shared_by_every_prompt_and_the_steps_grow(templates):
    for name in ("classify", "instances_input_first", "instances_output_first"):
        t = templates[name]
        steps = warm_steps(t, step_chars=500)
        prompts = [t.render(instruction=i) for i in ("Sort the list.", "Is it spam?")]
        assert len(steps) > 2
        *ahead, last = steps
        assert last == t.render(instruction="")
        for i, step in enumerate(ahead):
            assert all(p[:len(step)] == step for p in prompts), (name, i)
            if i:
                assert len(step) > len(ahead[i - 1]) and step[:len(ahead[i - 1])] == ahead[i - 1]
        if t.mode == "completion":  # a step at each line end past a multiple of step_chars
            assert all(s.endswith("\n") for s in ahead)
            assert [len(s) // 500 for s in ahead] == list(range(1, len(ahead) + 1))


def test_a_template_with_no_fixed_part_is_read_whole():
    t = Template("t.txt", "completion", text="{{instruction}}\nAnswer:")
    assert warm_steps(t) == ["\nAnswer:"]


def test_the_fixed_part_is_what_prompts_of_the_template_share(templates):
    for name in ("classify", "instances_input_first", "instances_output_first"):
        t = templates[name]
        fixed = fixed_text(t)
        a, b = (prompt_text(t.render(instruction=i)) for i in ("Sort it.", "Is it spam?"))
        assert a.startswith(fixed) and b.startswith(fixed)
        assert a[len(fixed)] != b[len(fixed)], name  # and no more
    whole = templates["classify"].render(instruction="x")
    assert prompt_text(whole).startswith(prompt_text(whole[:3]))  # earlier messages: a prefix


def test_the_prefixes_of_the_stages_the_model_serves_in_the_order_a_task_needs_them(templates):
    cfg = load_config(ROOT / "pipeline.yaml")
    found = stage_prefixes(cfg, templates, "local")
    assert [p.stage for p in found] == ["classify", "instances", "instances"]
    assert found[-1].steps[-1] == templates["instances_output_first"].render(instruction="")
    assert not any(p.ahead for p in found)
    cfg.stages.classify.model = "other"
    assert [p.stage for p in stage_prefixes(cfg, templates, "local")] == ["instances"] * 2


def test_every_replica_knows_every_prefix_and_reads_ahead_only_its_homes():
    prefixes = [Prefix("classify", "c", ("c",)), Prefix("instances", "i", ("i",))]

    def ahead(plan: list[list[Prefix]]) -> list[list[str]]:
        assert all([p.fixed for p in mine] == ["c", "i"] for mine in plan)
        return [[p.fixed for p in mine if p.ahead] for mine in plan]

    assert ahead(warm_plan(prefixes, 2)) == [["c"], ["i"]]
    assert ahead(warm_plan(prefixes, 3)) == [["c"], ["i"], []]
    assert ahead(warm_plan(prefixes, 1)) == [["c", "i"]]


def saved(tokens: int, size: int = 10) -> Saved:
    return Saved(f"state{tokens}", tokens, size)


def test_a_prompt_with_no_saved_prefix_is_read_afresh():
    store = PrefixStore(["Few shots:"], 100)
    assert store.begin("Few shots: sort it") == (None, 0)
    assert store.missing("Few shots: sort it") == "Few shots:"
    assert store.missing("Other: sort it") is None


def test_the_saved_prefix_is_loaded_only_when_the_model_is_elsewhere():
    store = PrefixStore(["Few shots:"], 100)
    store.keep("Few shots:", saved(40))
    assert store.missing("Few shots: sort it") is None
    assert store.begin("Few shots: sort it") == (None, 40)   # the model's state begins so
    assert store.begin("Propose: 1.") == (None, 0)
    assert store.begin("Few shots: is it spam") == ("state40", 40)
    store.lost()
    assert store.begin("Few shots: is it spam") == ("state40", 40)


def test_the_same_prompt_again_reuses_only_the_prefix():
    store = PrefixStore(["Few shots:"], 100)
    store.keep("Few shots:", saved(40))
    assert store.begin("Few shots: sort it") == (None, 40)
    assert store.begin("Few shots: sort it") == (None, 40)  # not the 45 tokens read last


def test_a_later_step_replaces_the_earlier_and_a_saved_prefix_makes_steps_needless():
    store = PrefixStore(["Few shots: a b c"], 100)
    store.keep("Few shots: a", saved(10))
    assert store.begin("Few shots: a b") == (None, 10)
    store.keep("Few shots: a b", saved(20))
    assert list(store.saved) == ["Few shots: a b"]
    assert not store.needed("Few shots: a") and store.needed("Few shots: a b c")
    store.keep("Few shots: a b c", saved(30))
    assert list(store.saved) == ["Few shots: a b c"] and not store.needed("Few shots: a b")


def test_a_prefix_past_the_capacity_is_not_saved_and_prompts_read_it_afresh():
    store = PrefixStore(["Few shots:", "Examples:"], 100)
    store.keep("Few shots:", saved(40, size=60))
    store.keep("Examples:", saved(30, size=50))
    assert list(store.saved) == ["Few shots:"]
    assert store.missing("Examples: sort it") is None
    assert store.begin("Examples: sort it") == (None, 0)


class FakeState:
    def __init__(self, n_tokens: int) -> None:
        self.n_tokens, self.llama_state_size, self.scores = n_tokens, 1 << 20, np.zeros(4)


class FakeLlama:
    """What LocalModelWorker uses of llama_cpp.Llama. A prompt of n characters is n tokens;
    `asked` records each prompt with the tokens of the model's state it could reuse."""

    asked: list[tuple[Any, int]] = []
    loaded: list[int] = []

    def __init__(self, **_: Any) -> None:
        self.n_tokens = 0

    def _read(self, prompt: Any) -> None:
        self.asked.append((prompt, self.n_tokens))
        self.n_tokens = len(prompt_text(prompt)) + 1

    def create_completion(self, prompt: str, **_: Any) -> dict[str, Any]:
        self._read(prompt)
        return {"choices": [{"text": "x", "finish_reason": "stop"}], "usage": {}}

    def create_chat_completion(self, messages: list[Any], **_: Any) -> dict[str, Any]:
        self._read(messages)
        return {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}

    def save_state(self) -> FakeState:
        return FakeState(self.n_tokens)

    def load_state(self, state: FakeState) -> None:
        self.loaded.append(state.n_tokens)
        self.n_tokens = state.n_tokens


@pytest.fixture
def worker(monkeypatch) -> Any:
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "Llama", FakeLlama)
    monkeypatch.setattr(FakeLlama, "asked", [])
    monkeypatch.setattr(FakeLlama, "loaded", [])

    def make(cache_mb: int = 1024) -> LocalModelWorker:
        return LocalModelWorker(LocalModel(path="fake.gguf", cache_mb=cache_mb))
    return make


def request(prompt: str) -> Request:
    return Request(prompt, temperature=0.0, top_p=1.0, max_tokens=3)


def served(w: LocalModelWorker, asks: list[tuple[str, str]], prefixes: list[Prefix],
           together: bool = True) -> list[str]:
    """What the fake model read, in order, after being told `prefixes` and asked `asks`:
    all queued at once (the prefixes first), or one after the other."""
    async def main() -> None:
        answers = [asyncio.ensure_future(w.complete(request(p), stage))
                   for p, stage in asks] if together else []
        await w.warm(prefixes)
        await asyncio.gather(*answers)
        for p, stage in asks if not together else ():
            await w.complete(request(p), stage)
        quiet = 0
        while quiet < 20:  # until nothing more is read for 0.2 s (the fake is instant)
            seen = len(FakeLlama.asked)
            await asyncio.sleep(0.01)
            idle = len(FakeLlama.asked) == seen and w._running_prio is None
            quiet = quiet + 1 if idle else 0

    asyncio.run(main())
    return [prompt for prompt, _ in FakeLlama.asked]


SHOTS = Prefix("classify", "Shots: a\nb\nTask: ", ("Shots: a\n", "Shots: a\nb\nTask: \n"),
               ahead=True)


def test_reading_ahead_waits_for_every_request_queued(worker):
    assert served(worker(), [("p", "propose"), ("q", "classify")], [SHOTS]) == [
        "q", "p", *SHOTS.steps]


def test_a_request_reads_its_prefix_first_once_and_then_only_its_own_part(worker):
    w = worker()
    sort, spam = "Shots: a\nb\nTask: sort", "Shots: a\nb\nTask: spam"
    asks = [(sort, "classify"), (spam, "classify"), ("p", "propose"), (sort, "classify")]
    later = dataclasses.replace(SHOTS, ahead=False)
    assert served(w, asks, [later], together=False) == [SHOTS.steps[-1], sort, spam, "p", sort]
    prefix = len(SHOTS.steps[-1]) + 1  # the tokens of the prompt that read it, and one answer
    assert [n for _, n in FakeLlama.asked] == [0, prefix, prefix, 0, prefix]
    assert FakeLlama.loaded == [prefix]  # after the proposal only


def test_reading_ahead_starts_with_the_first_request(worker):
    assert served(worker(), [], [SHOTS]) == []


def test_a_prefix_not_at_home_is_read_only_when_a_request_needs_it(worker):
    later = dataclasses.replace(SHOTS, ahead=False)
    assert served(worker(), [("p", "propose")], [later]) == ["p"]


def test_without_room_for_states_nothing_is_read_ahead_or_kept(worker):
    w = worker(cache_mb=0)
    assert served(w, [("Shots: a\nb\nTask: sort", "classify")], [SHOTS]) == [
        "Shots: a\nb\nTask: sort"]
    assert w.prefixes.saved == {}


def test_a_stopping_run_reads_nothing_more_ahead(worker):
    w = worker()

    async def main() -> None:
        await w.warm([SHOTS])
        w.cancel_pending("propose")
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert w._heap == [] and FakeLlama.asked == []


class FakeReplica:
    """A replica handle: `complete.remote(req, stage)` answers once released."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.release = asyncio.Event()
        self.complete = self

    def remote(self, req: Request, stage: str, asked: float = 0.0) -> Any:
        self.asked.append(stage)

        async def answer() -> Completion:
            await self.release.wait()
            return Completion("x", "stop", "m")
        return answer()


def test_a_stage_sends_its_requests_home_and_only_the_excess_elsewhere():
    async def main(stage: str, n: int) -> list[int]:
        replicas = [FakeReplica(), FakeReplica()]
        backend = LocalBackend(replicas, stage, "m")
        asks = [asyncio.ensure_future(backend.complete(request("q"))) for _ in range(n)]
        await asyncio.sleep(0.01)
        for r in replicas:
            r.release.set()
        await asyncio.gather(*asks)
        return [len(r.asked) for r in replicas]

    assert asyncio.run(main("classify", 5)) == [5, 0]
    assert asyncio.run(main("instances", 5)) == [0, 5]
    assert asyncio.run(main("instances", 8)) == [2, 6]
    assert asyncio.run(main("propose", 5)) == [2, 3]


def test_within_a_stage_the_oldest_work_goes_first(worker):
    """A parse retry keeps its first attempt's time, so it does not wait behind the
    requests asked after it (the next dataset line waits on the earliest task)."""
    w = worker()

    async def main() -> None:
        await asyncio.gather(*[w.complete(request(p), stage, asked) for p, stage, asked in (
            ("later", "instances", 2.0), ("proposal", "propose", 0.5),
            ("retry", "instances", 1.0), ("latest", "instances", 3.0))])

    asyncio.run(main())
    assert [prompt for prompt, _ in FakeLlama.asked] == ["retry", "later", "latest", "proposal"]

"""Which parts share a process, and a part reached through its host as if it were an actor."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from actors.engine.host import Host, PartHandle, host_name, stage_groups

SAME = {"num_cpus": 0}


def listed(proposers: int, instancers: int, asks: dict | None = None,
           instancer_asks: dict | None = None) -> list[tuple[str, str, dict]]:
    asks = asks or SAME
    return ([("proposer", f"proposer-{i}", asks) for i in range(proposers)]
            + [("classifier", "classifier", asks)]
            + [("instancer", f"instancer-{i}", instancer_asks or asks)
               for i in range(instancers)])


def test_one_of_each_share_one_process():
    assert stage_groups(listed(1, 1), True) == [["proposer-0", "classifier", "instancer-0"]]


def test_the_jth_of_each_kind_share_so_hosts_can_spread_like_workers():
    assert stage_groups(listed(2, 3), True) == [
        ["proposer-0", "classifier", "instancer-0"], ["proposer-1", "instancer-1"],
        ["instancer-2"]]


def test_workers_asking_for_other_resources_never_share():
    gpu = {"num_cpus": 0, "resources": {"gpu_node": 1}}
    assert stage_groups(listed(1, 2, instancer_asks=gpu), True) == [
        ["proposer-0", "classifier"], ["instancer-0"], ["instancer-1"]]


def test_not_sharing_gives_each_worker_its_own_process():
    assert stage_groups(listed(2, 1), False) == [
        ["proposer-0"], ["proposer-1"], ["classifier"], ["instancer-0"]]


class Counter:
    def __init__(self, start: int) -> None:
        self.n = start

    def add(self, k: int = 1) -> int:
        self.n += k
        return self.n

    async def later(self, k: int) -> int:
        await asyncio.sleep(0)
        return self.add(k=k)


class Other:
    def __init__(self) -> None:
        pass


def test_a_host_builds_its_parts_and_calls_sync_and_async_methods():
    host = Host({"a": (Counter, (10,)), "b": (Counter, (0,))})
    assert asyncio.run(host.call("a", "add", 2)) == 12
    assert asyncio.run(host.call("a", "later", k=3)) == 15
    assert asyncio.run(host.call("b", "add")) == 1  # each part its own state


def test_a_part_handle_reads_like_an_actor_handle_and_travels():
    calls = []

    class FakeActor:
        class call:  # noqa: N801 - stands for a Ray actor method
            @staticmethod
            def remote(*args, **kwargs):
                calls.append((args, kwargs))
                return "ref"

    handle = PartHandle(FakeActor(), "gate")
    assert handle.acquire_many.remote("m", 3, life="x") == "ref"
    assert calls == [(("gate", "acquire_many", "m", 3), {"life": "x"})]
    with pytest.raises(AttributeError):
        handle.__ray_call__  # noqa: B018 - not a part's method
    copy = pickle.loads(pickle.dumps(PartHandle("actor", "pool")))
    assert (copy.actor, copy.part) == ("actor", "pool")


def test_a_host_is_named_after_what_it_holds():
    assert host_name({"pool": (Counter, ()), "gate": (Other, ())}) == "Counter+Other"
    assert host_name({"a": (Counter, ()), "b": (Counter, ())}) == "Counter"

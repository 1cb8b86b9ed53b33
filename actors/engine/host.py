"""Where the run's parts live: one Ray worker process may hold several.

Every Ray worker process costs a share of a core even while the run only waits: Ray's core
worker wakes each one's main thread every 10 ms (benchmarks/README.md, idle). So parts that
gain nothing from a process of their own share one: the pool and the gate on the driver's
node, a node's stage workers. A part is a plain object and does not know where it lives: its
callers hold a `PartHandle`, which is called like an actor handle (`part.method.remote(...)`).
A part alone in its process is a plain Ray actor of its own class, as before.
"""

from __future__ import annotations

import inspect
from typing import Any

import ray

# A part: (its class, the arguments of its constructor). Built again in a new process when
# Ray restarts the host, from the same arguments, as Ray rebuilds an actor.
Part = tuple[type, tuple[Any, ...]]


class Host:
    """Several parts in one async actor process, each reached by its name."""

    def __init__(self, parts: dict[str, Part]) -> None:
        self.parts = {name: cls(*args) for name, (cls, args) in parts.items()}

    async def call(self, part: str, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.parts[part], method)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result


class _Method:
    def __init__(self, actor: Any, part: str, method: str) -> None:
        self.actor, self.part, self.method = actor, part, method

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.actor.call.remote(self.part, self.method, *args, **kwargs)


class PartHandle:
    """One part of a host, called as an actor would be; picklable, so it travels to other
    actors like a handle does."""

    def __init__(self, actor: Any, part: str) -> None:
        self.actor, self.part = actor, part

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("__"):
            raise AttributeError(method)
        return _Method(self.actor, self.part, method)


def stage_groups(workers: list[tuple[str, str, Any]], share: bool) -> list[list[str]]:
    """Which stage workers share a process: (kind, name, what it asks Ray for) in, lists of
    names out. Workers that ask for the same share, the j-th of each kind with each other, so
    a second host gets the second proposer and instance actor, and hosts can spread over
    nodes like the workers did; workers that ask for different resources (other kinds of
    nodes) never share. `share` False: one process each."""
    if not share:
        return [[name] for _, name, _ in workers]
    groups: list[tuple[Any, dict[str, list[str]]]] = []
    for kind, name, asks in workers:
        by_kind = next((g for a, g in groups if a == asks), None)
        if by_kind is None:
            groups.append((asks, by_kind := {}))
        by_kind.setdefault(kind, []).append(name)
    hosts = []
    for _, by_kind in groups:
        for j in range(max(len(names) for names in by_kind.values())):
            hosts.append([names[j] for names in by_kind.values() if j < len(names)])
    return hosts


def host_name(parts: dict[str, Part]) -> str:
    """The process's name (`ray::Pool+Gate` in ps and Ray's state API): what it holds."""
    return "+".join(dict.fromkeys(cls.__name__ for cls, _ in parts.values()))


def place(parts: dict[str, Part], options: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Start one process for `parts`: (a handle per part, the process's actor handle)."""
    if len(parts) == 1:
        ((name, (cls, args)),) = parts.items()
        actor = ray.remote(**options)(cls).remote(*args)
        return {name: actor}, actor
    named = type(host_name(parts), (Host,), {"__module__": __name__,
                                             "__doc__": Host.__doc__})
    actor = ray.remote(**options)(named).remote(parts)
    return {name: PartHandle(actor, name) for name in parts}, actor

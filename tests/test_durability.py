"""The run directory without Ray or a model: commits, torn tails, failed writes, the lock.
(What the ledger commits, and recovery from it, is in test_ledger.py.)"""

from __future__ import annotations

import json
import resource
import signal

import pytest

from actors.rundir.runlog import RunDirError, RunFiles, recover


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("torn_commit", [
    '{"time": 1, "lines": {"dataset"',                 # cut mid-line
    '{"time": 1, "lines": {"dataset": 1}}',            # whole but for its newline
    'x\n{"time": 1, "lines": {"dataset": 1}}\n',       # a line that does not parse ends the log
], ids=["mid_line", "no_newline", "bad_line"])
def test_commit_then_recover_cuts_a_torn_line_and_an_uncommitted_batch(tmp_path, torn_commit):
    files = RunFiles(tmp_path)
    files.commit({"dataset": [{"id": "a"}], "rejected": []}, {"counts": {"task": {"in": 1}}})
    files.commit({"dataset": [{"id": "b"}]}, {"counts": {"task": {"in": 1}}})
    files.close()
    with (tmp_path / "dataset.jsonl").open("a") as fh:
        fh.write('{"id": "c"}\n{"id": "d", "instr')  # a batch with no commit, then a torn line
    with (tmp_path / "commits.jsonl").open("a") as fh:
        fh.write(torn_commit)
    committed = recover(tmp_path)
    assert [r["id"] for r in lines(tmp_path / "dataset.jsonl")] == ["a", "b"]
    assert committed.counts == {"task": {"in": 2}} and committed.batches == 2
    assert len(lines(tmp_path / "commits.jsonl")) == 2


def test_a_file_shorter_than_its_commits_is_refused(tmp_path):
    files = RunFiles(tmp_path)
    files.commit({"dataset": [{"id": "a"}, {"id": "b"}]}, {})
    files.close()
    (tmp_path / "dataset.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(RunDirError, match="dataset.jsonl: holds 1 complete lines but"):
        recover(tmp_path)


def test_a_failed_write_leaves_the_files_as_committed(tmp_path):
    files = RunFiles(tmp_path)
    files.commit({"dataset": [{"id": "a"}]}, {})
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    size = sum(sizes.values())
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 64, old_limit[1]))
    try:
        with pytest.raises(RunDirError, match="file size limit was reached.*--resume"):
            files.commit({"responses": [{"id": "r", "text": "x" * 10}],
                          "dataset": [{"id": "b", "text": "y" * 4096}]}, {})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    # Cut back at once (the responses line that was written too), not only by the next recover.
    assert {p.name: p.stat().st_size for p in tmp_path.iterdir()} == sizes
    files.close()
    recover(tmp_path)
    assert [r["id"] for r in lines(tmp_path / "dataset.jsonl")] == ["a"]
    assert lines(tmp_path / "responses.jsonl") == []


def test_one_run_at_a_time_per_directory(tmp_path):
    from actors.engine.run_inputs import RunError
    from actors.rundir.prepare import lock_run_dir

    held = lock_run_dir(tmp_path)
    with pytest.raises(RunError, match="another run is using this directory"):
        lock_run_dir(tmp_path)
    held.close()
    lock_run_dir(tmp_path).close()

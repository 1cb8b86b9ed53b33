import json

import pytest

from actors.cli import main
from tests.conftest import ROOT


def test_validate_ok(capsys):
    assert main(["validate", str(ROOT / "pipeline.yaml")]) == 0
    assert "valid (175 seed tasks" in capsys.readouterr().out


def test_validate_names_the_key(tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text((ROOT / "pipeline.yaml").read_text().replace(
        "seeds:\n  - seeds/seed_tasks.jsonl", f"seeds:\n  - {ROOT}/seeds/seed_tasks.jsonl")
        .replace("prompts_dir: prompts", f"prompts_dir: {ROOT}/prompts")
        .replace("  proposers: 1", "  proposerz: 1"))
    assert main(["validate", str(bad)]) == 2
    assert "actors.proposerz: unknown key" in capsys.readouterr().err


def test_run_rejects_bad_target(capsys):
    assert main(["run", str(ROOT / "pipeline.yaml"), "--target", "0"]) == 2
    assert "--target must be at least 1" in capsys.readouterr().err


def test_resume_with_a_changed_method_is_refused_before_anything_starts(tmp_path, capsys):
    from actors.config import load_config
    from actors.engine.run_inputs import load_templates
    from actors.rundir.resume import fingerprint

    cfg = load_config(ROOT / "pipeline.yaml")
    cfg.stages.instances.max_tokens = 500
    method = fingerprint(cfg, [t.path for t in load_templates(cfg).values()])
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "stopped", "method": method}))
    (run / "dataset.jsonl").write_text('{"id": "task_000000"}\n')
    assert main(["run", str(ROOT / "pipeline.yaml"), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume with a different method" in err
    assert "stages.instances.max_tokens: was 500, now 300" in err
    assert (run / "dataset.jsonl").read_text() == '{"id": "task_000000"}\n'  # untouched
    assert main(["run", str(ROOT / "pipeline.yaml"), "--out", str(tmp_path / "new"),
                 "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_cost_is_refused_as_the_yaml_refuses_it(value, capsys):
    with pytest.raises(SystemExit) as info:  # argparse: before anything is read or started
        main(["run", str(ROOT / "pipeline.yaml"), "--dry-run", "--max-cost", value])
    assert info.value.code == 2
    assert (f"argument --max-cost: '{value}': Input should be greater than 0, as for "
            f"run.max_cost in the config") in capsys.readouterr().err


def test_validate_imports_no_ray():
    """validate checks everything before a cluster exists: it must not pull Ray in."""
    import subprocess
    import sys

    code = ("import sys; from actors.cli import main; rc = main(['validate', 'pipeline.yaml']); "
            "assert rc == 0; assert 'ray' not in sys.modules, 'ray imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

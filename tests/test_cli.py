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
        .replace("  proposers: 2", "  proposer: 2"))
    assert main(["validate", str(bad)]) == 2
    assert "actors.proposer: unknown key" in capsys.readouterr().err


def test_run_rejects_bad_target(capsys):
    assert main(["run", str(ROOT / "pipeline.yaml"), "--target", "0"]) == 2
    assert "--target must be at least 1" in capsys.readouterr().err

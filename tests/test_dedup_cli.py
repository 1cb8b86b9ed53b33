import json

import pytest

from actors.cli import main


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dedup_cli_both_rules(tmp_path, capsys):
    base = " ".join(f"w{i}" for i in range(10))
    at_07 = " ".join([f"w{i}" for i in range(7)] + ["z1", "z2", "z3"])  # F exactly 0.7
    src = _write(tmp_path / "in.jsonl", [{"id": "a", "instruction": base},
                                         {"id": "b", "instruction": at_07},
                                         {"id": "c", "instruction": "something else entirely"}])
    out = tmp_path / "kept.jsonl"
    rej = tmp_path / "rej.jsonl"
    assert main(["dedup", str(src), "--out", str(out), "--rejected", str(rej)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["candidates"], summary["kept"]) == (3, 2)
    assert [json.loads(line)["id"] for line in out.open()] == ["a", "c"]
    dropped = json.loads(rej.read_text())
    assert dropped["record"]["id"] == "b" and dropped["max_rouge_l"] == 0.7
    assert dropped["neighbours"] == [{"id": "a", "score": 0.7}]
    assert main(["dedup", str(src), "--out", str(out), "--keep-at-threshold"]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 3


def test_dedup_cli_against_and_field(tmp_path, capsys):
    seeds = _write(tmp_path / "seeds.jsonl", [{"id": "s", "text": "explain how tides work"}])
    src = _write(tmp_path / "in.jsonl", [{"text": "Explain how tides work."},
                                         {"text": "Name three rivers in Africa."}])
    out = tmp_path / "kept.jsonl"
    assert main(["dedup", str(src), "--out", str(out), "--field", "text",
                 "--against", str(seeds)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["against"], summary["kept"]) == (1, 1)


@pytest.mark.parametrize("line,message", [
    ("{oops", "in.jsonl:2: not valid JSON"),
    ('{"other": 1}', "in.jsonl:2: no string field 'instruction'"),
])
def test_dedup_cli_bad_input(tmp_path, capsys, line, message):
    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": "fine line here"}\n' + line + "\n")
    assert main(["dedup", str(src), "--out", str(tmp_path / "k.jsonl")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing input", "no such field", "not utf-8"])
def test_a_failed_dedup_leaves_the_old_output_as_it_was(tmp_path, capsys, case):
    src = tmp_path / "in.jsonl"
    if case == "no such field":
        _write(src, [{"text": "a record without the field"}])
    elif case == "not utf-8":
        src.write_bytes(b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n')
    out = _write(tmp_path / "kept.jsonl", [{"instruction": "an earlier result"}])
    before = out.read_text()
    assert main(["dedup", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert {"missing input": "in.jsonl: file not found",
            "no such field": "in.jsonl:1: no string field 'instruction'",
            "not utf-8": "in.jsonl:2: not UTF-8 text (byte 0xe9"}[case] in err
    assert out.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["kept.jsonl"] + (["in.jsonl"] if case != "missing input" else []))  # no temp file


@pytest.mark.parametrize("flags,message", [
    (["--out", "{dir}/../{name}/in.jsonl"], "--out {dir}/../{name}/in.jsonl: is also an input"),
    (["--out", "{dir}/k.jsonl", "--rejected", "{dir}/in.jsonl"], "--rejected {dir}/in.jsonl: "
     "is also an input"),
    (["--out", "{dir}/k.jsonl", "--against", "{dir}/s.jsonl", "--rejected", "{dir}/s.jsonl"],
     "--rejected {dir}/s.jsonl: is also an input"),
    (["--out", "{dir}/k.jsonl", "--rejected", "{dir}/k.jsonl"],
     "--rejected {dir}/k.jsonl: is also --out"),
])
def test_an_output_that_is_an_input_is_refused_before_anything_is_read(tmp_path, capsys,
                                                                       flags, message):
    src = _write(tmp_path / "in.jsonl", [{"instruction": "keep this one"}])
    seeds = _write(tmp_path / "s.jsonl", [{"instruction": "a seed to keep"}])
    before = src.read_text(), seeds.read_text()
    names = {"dir": tmp_path, "name": tmp_path.name}
    assert main(["dedup", str(src), *[f.format(**names) for f in flags]]) == 2
    assert message.format(**names) in capsys.readouterr().err
    assert (src.read_text(), seeds.read_text()) == before
    assert not (tmp_path / "k.jsonl").exists()

import random
import re

import pytest

from actors.method.prompts import (
    Shot,
    TemplateError,
    clean_shot,
    load_template,
    number_shots,
    parse_chat,
    sample_shots,
)
from tests.conftest import ROOT

PROMPTS = ROOT / "prompts"


def test_number_shots_is_the_papers_format():
    text = "Come up with a series of tasks:\n" + number_shots(["A  b:", "C\nd"])
    assert text == "Come up with a series of tasks:\n1. A b\n2. C d\n3."


def test_clean_shot():
    assert clean_shot("  Do   this:  ") == "Do this"
    assert clean_shot("Keep: the middle") == "Keep: the middle"


def test_sample_six_human_two_machine():
    human = [Shot(f"h{i}", f"human {i}") for i in range(20)]
    machine = [Shot(f"m{i}", f"machine {i}") for i in range(5)]
    shots = sample_shots(random.Random(0), human, machine)
    assert len(shots) == 8
    assert sum(s.id.startswith("m") for s in shots) == 2
    assert len({s.id for s in shots}) == 8


def test_fewer_machine_shots_while_pool_is_small():
    human = [Shot(f"h{i}", "x") for i in range(20)]
    shots = sample_shots(random.Random(0), human, [Shot("m0", "y")])
    assert len(shots) == 8 and sum(s.id == "m0" for s in shots) == 1
    assert len(sample_shots(random.Random(0), human, [])) == 8


def test_sampling_is_seeded():
    human = [Shot(f"h{i}", "x") for i in range(50)]
    a = sample_shots(random.Random(7), human, [])
    b = sample_shots(random.Random(7), human, [])
    assert a == b


@pytest.mark.parametrize("stage", ["propose", "classify", "instances_input_first",
                                   "instances_output_first"])
@pytest.mark.parametrize("mode", ["completion", "chat"])
def test_every_project_template_loads_and_renders(stage, mode):
    tpl = load_template(PROMPTS, stage, mode)
    values = {"shots": "1. a\n2.", "instruction": "Do the thing."}
    rendered = tpl.render(**{k: values[k] for k in tpl.placeholders})
    text = rendered if isinstance(rendered, str) else rendered[-1]["content"]
    assert "{{" not in text
    if mode == "chat":
        assert rendered[0]["role"] == "system" and rendered[-1]["role"] == "user"


def _classify_answers(mode):
    tpl = load_template(PROMPTS, "classify", mode)
    if mode == "completion":
        return re.findall(r"Is it classification\? (Yes|No)", tpl.text)
    return [c for role, c in tpl.messages if role == "assistant"]


@pytest.mark.parametrize("mode", ["completion", "chat"])
def test_classify_prompt_has_31_examples_12_yes(mode):
    answers = _classify_answers(mode)
    assert len(answers) == 31
    assert answers.count("Yes") == 12 and answers.count("No") == 19


def test_completion_prompts_end_where_the_model_continues():
    assert load_template(PROMPTS, "classify", "completion").render(
        instruction="X").endswith("Task: X\nIs it classification?")
    assert load_template(PROMPTS, "propose", "completion").render(
        shots=number_shots(["a"])) == "Come up with a series of tasks:\n1. a\n2."


def test_chat_template_errors(tmp_path):
    with pytest.raises(TemplateError, match="before the first"):
        parse_chat("stray\n=== user ===\nhi", "x.txt")
    with pytest.raises(TemplateError, match="must end with"):
        parse_chat("=== system ===\nhi\n=== assistant ===\nyo", "x.txt")
    with pytest.raises(TemplateError, match="not found"):
        load_template(tmp_path, "propose", "chat")
    (tmp_path / "propose.completion.txt").write_text("{{shots}} and {{other}}")
    with pytest.raises(TemplateError) as info:
        load_template(tmp_path, "propose", "completion").render(shots="x")
    assert str(info.value) == (f"{tmp_path}/propose.completion.txt: unknown placeholder "
                               f"{{{{other}}}}; this stage fills {{{{shots}}}} (fix the spelling "
                               f"or remove it)")


def test_a_template_that_is_not_utf8_names_its_line(tmp_path):
    (tmp_path / "propose.completion.txt").write_bytes(b"Come up with\ntasks, caf\xe9 {{shots}}")
    with pytest.raises(TemplateError, match=r"propose\.completion\.txt:2: not UTF-8 text \(byte "
                       r"0xe9 at byte 11 of the line\); save the file as UTF-8"):
        load_template(tmp_path, "propose", "completion")

import pytest

from actors.config import Filters
from actors.method.filters import (
    INSTANCE_RULES,
    INSTRUCTION_RULES,
    Instance,
    apply_chain,
    build_chain,
    filter_task_instances,
)

CHAIN = build_chain(INSTRUCTION_RULES, Filters().instruction.model_dump())
INST_CHAIN = build_chain(INSTANCE_RULES, Filters().instance.model_dump())


def verdict(text):
    return apply_chain(CHAIN, text)


@pytest.mark.parametrize("text,ok", [
    ("one two three", False),                      # 3 words: dropped (<= 3)
    ("one two three four", True),                  # 4 words: kept
    (" ".join(["w"] * 150), True),                 # 150: kept
    (" ".join(["w"] * 151), False),                # 151: dropped (> 150)
])
def test_word_count_boundaries(text, ok):
    v = verdict(text)
    assert v.ok is ok
    if not ok:
        assert v.rule == "word_count"


@pytest.mark.parametrize("text,ok", [
    ("Describe the image in four words", False),
    ("Describe the IMAGES in four words", False),
    ("Explain how to read a graph well", False),
    ("Explain graphic design in simple terms", True),   # whole words only
    ("Sort these files by their size", False),
    ("Tell me how to go to the station", False),
    ("Tell me how to goto the station", True),
    ("Draw a cat using ASCII characters", False),
    ("Describe the plot of a novel", False),
    ("Suggest a mapping from keys to values", True),
])
def test_keywords(text, ok):
    v = verdict(text)
    assert v.ok is ok
    if not ok:
        assert v.rule == "keywords"


def test_starts_with_punctuation_ascii():
    assert verdict("Write a program that sorts a list").rule == "starts_with"
    assert verdict("Explain why the sky is blue").ok
    assert verdict("\"Quote this sentence please now\"").rule == "first_char_punctuation"
    assert verdict("Érase una vez una historia bonita").rule == "first_char_ascii"


@pytest.mark.parametrize("text", ["write a program that sorts a list",
                                  "Write a Program that sorts a list",
                                  "WRITE A PROGRAM that sorts a list"])
def test_write_a_program_in_any_case(text):
    # The original tests the prefix after .capitalize(), so every casing of it is caught.
    assert text.capitalize().startswith("Write a program")
    assert verdict(text).rule == "starts_with"


def test_starts_with_can_be_case_sensitive():
    conf = Filters().instruction.model_dump()
    conf["starts_with"]["ignore_case"] = False
    chain = build_chain(INSTRUCTION_RULES, conf)
    assert apply_chain(chain, "Write a program that sorts a list").rule == "starts_with"
    assert apply_chain(chain, "write a Program that sorts a list").ok


def test_disabled_rule_is_skipped():
    conf = Filters().instruction.model_dump()
    conf["keywords"]["enabled"] = False
    chain = build_chain(INSTRUCTION_RULES, conf)
    assert apply_chain(chain, "Describe the image in four words").ok


def test_instance_rules():
    assert apply_chain(INST_CHAIN, Instance("a", "b", truncated=True)).rule == "truncated"
    assert apply_chain(INST_CHAIN, Instance("same", "same")).rule == "input_equals_output"
    assert apply_chain(INST_CHAIN, Instance("x", "  ")).rule == "empty_output"
    assert apply_chain(INST_CHAIN, Instance("Input:", "y")).rule == "ends_with"
    assert apply_chain(INST_CHAIN, Instance("x", "Answer:")).rule == "ends_with"
    assert apply_chain(INST_CHAIN, Instance("", "An answer.")).ok


def test_conflicting_outputs_drop_the_task():
    r = filter_task_instances([Instance("2+2", "4"), Instance("2+2", "5")], INST_CHAIN)
    assert not r.task_verdict.ok and r.task_verdict.rule == "conflicting_outputs"
    assert r.kept == []


def test_empty_inputs_never_conflict_and_duplicates_removed_and_capped():
    insts = [Instance("", "a"), Instance("", "b"), Instance("q", "r"), Instance("q", "r")]
    insts += [Instance(f"i{k}", f"o{k}") for k in range(5)]
    r = filter_task_instances(insts, INST_CHAIN, max_instances=5)
    assert r.task_verdict.ok
    assert r.kept == [Instance("", "a"), Instance("", "b"), Instance("q", "r"),
                      Instance("i0", "o0"), Instance("i1", "o1")]
    rules = sorted(v.rule for _, v in r.dropped)
    assert rules == ["duplicate_instance"] + ["max_instances"] * 3


def test_task_with_nothing_left_is_rejected_with_reasons():
    r = filter_task_instances([Instance("a", "a")], INST_CHAIN)
    assert r.task_verdict.rule == "no_valid_instances"
    assert "input_equals_output" in r.task_verdict.reason

import re
import string

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
from actors.method.parsing import (
    parse_classification,
    parse_input_first,
    parse_instructions,
    parse_output_first,
)


def test_completion_continuation_after_nine():
    text = " Say hello in French.\n10. Tell a  joke about\ncats.\n11. Sum two numbers."
    assert parse_instructions(text, truncated=False).instructions == [
        "Say hello in French.", "Tell a joke about cats.", "Sum two numbers."]


def test_chat_restating_numbers():
    text = "9. First new task here.\n10. Second new task here."
    assert parse_instructions(text, False).instructions == [
        "First new task here.", "Second new task here."]


def test_truncated_response_dropped_whole():
    r = parse_instructions(" A.\n10. B.", truncated=True)
    assert r.instructions == [] and r.dropped_reason == "truncated"


def test_empty_and_garbage():
    assert parse_instructions("", False).dropped_reason == "empty"
    assert parse_instructions("\n\n  \n", False).dropped_reason == "empty"
    assert parse_instructions("%%%garbage", False).instructions == ["%%%garbage"]


def test_numbers_need_dot_space_to_split():
    text = " Compute 3.5 times 2.\n10.5 is not a list item\n11. Real item."
    assert parse_instructions(text, False).instructions == [
        "Compute 3.5 times 2. 10.5 is not a list item", "Real item."]


def test_capitalize_quirk_is_optional():
    text = " Explain NASA to a child."
    assert parse_instructions(text, False).instructions == ["Explain NASA to a child."]
    assert parse_instructions(text, False, capitalize=True).instructions == [
        "Explain nasa to a child."]


def test_classification_answers():
    assert parse_classification(" Yes\n") is True
    assert parse_classification("yes.") is True
    assert parse_classification(" No") is False
    assert parse_classification(" Maybe") is None
    assert parse_classification("") is None


def test_input_first_examples():
    text = ("Example 1\nInput: 2 + 2\nOutput: 4\nExample 2\nInput: 3 * 3\nOutput: 9\n\n"
            "Task: Something else\nOutput: x")
    assert parse_input_first(text, False) == [Instance("2 + 2", "4"), Instance("3 * 3", "9")]


def test_input_first_no_input():
    assert parse_input_first("Output: A short poem.\nWith two lines.", False) == [
        Instance("", "A short poem.\nWith two lines.")]
    assert parse_input_first("Just the answer.", False) == [Instance("", "Just the answer.")]


def test_input_first_runs_on_and_truncation():
    text = "Input: a\nOutput: b\nInput: c\nOutput: d"
    assert parse_input_first(text, False) == [Instance("a", "b")]
    got = parse_input_first("Example 1\nInput: a\nOutput: b\nExample 2\nInput: c\nOutput: d", True)
    assert got == [Instance("a", "b"), Instance("c", "d", truncated=True)]


def test_output_first():
    text = ("Class label: Positive\nInput: I loved it.\nClass label: Negative\n"
            "Input: Awful.\nOutput: Negative\n\nTask: next")
    assert parse_output_first(text, False) == [
        Instance("I loved it.", "Positive"), Instance("Awful.", "Negative")]


def test_output_first_without_input_and_garbage():
    assert parse_output_first("Class label: (b)\nClass label: (c)", False) == [
        Instance("", "(b)"), Instance("", "(c)")]
    assert parse_output_first("no labels at all", False) == []


# -- The original code, restated as the oracle ---------------------------------------------
# A re-statement (our wording, the same rules) of yizhongw/self-instruct at commit
# 10dd06e1156c693482f9ab752ed6f3d3b0bf23cb: post_process_gpt3_response in
# self_instruct/bootstrap_instructions.py; parse_input_output, parse_instances_for_generation_task,
# parse_instances_for_classification_task, filter_invalid_instances and
# filter_duplicate_instances in self_instruct/prepare_for_finetuning.py.
# The cap of 5 (a random sample there) is left out: it is not parsing.

ORIGINAL_KEYWORDS = ["image", "images", "graph", "graphs", "picture", "pictures", "file",
                     "files", "map", "maps", "draw", "plot", "go to"]
ORIGINAL_OUTPUT = r"Output\s*\d*\s*:"
ORIGINAL_INPUT = r"Input\s*\d*\s*:"
ORIGINAL_EXAMPLE = r"Example\s?\d*\.?"


def original_proposals(text: str, cut_off: bool) -> list[str]:
    if cut_off:
        return []
    kept = []
    for item in re.split(r"\n\d+\s?\. ", text):
        inst = re.sub(r"\s+", " ", item).strip().capitalize()
        if not inst or not 3 < len(inst.split()) <= 150:
            continue
        if any(re.search(rf"\b({w})\b", inst, re.IGNORECASE) for w in ORIGINAL_KEYWORDS):
            continue
        if inst.startswith("Write a program") or inst[0] in string.punctuation:
            continue
        if inst[0].isascii():
            kept.append(inst)
    return kept


def _original_pair(text: str) -> tuple[str, str]:
    if re.search(ORIGINAL_OUTPUT, text):
        pieces = re.split(ORIGINAL_OUTPUT, text)
        inp, out = pieces[0].strip(), pieces[1].strip()
    else:
        inp, out = "", text.strip()
    out = re.split(ORIGINAL_INPUT, out)[0].strip()
    return re.sub("^" + ORIGINAL_INPUT, "", inp).strip(), out


def _original_filters(found: list[tuple[str, str]]) -> set[tuple[str, str]]:
    valid = [(i, o) for i, o in found
             if i != o and o and not i.strip().endswith(":") and not o.strip().endswith(":")]
    for k, (inp, out) in enumerate(valid):
        if inp and any(inp == i and out != o for i, o in valid[:k]):
            return set()
    return set(valid)


def original_input_first(raw: str, cut_off: bool) -> set[tuple[str, str]]:
    raw = raw.strip()
    if re.search(ORIGINAL_EXAMPLE, raw):
        found = [_original_pair(p) for p in re.split(ORIGINAL_EXAMPLE, raw) if p.strip()]
    elif re.search(ORIGINAL_OUTPUT, raw):
        found = [_original_pair(raw)]
    else:
        return set()
    return _original_filters(found[:-1] if cut_off else found)


def original_output_first(raw: str, cut_off: bool) -> set[tuple[str, str]]:
    if "Class label:" not in raw:
        return set()
    found = []
    for piece in raw.split("Class label:")[1:]:
        label, _, inp = piece.strip().partition("\n")
        found.append((inp.strip(), label.strip()))
    return _original_filters(found[:-1] if cut_off else found)


# -- Ours, end to end (parse, then the default filters), in the oracle's terms --------------

INSTRUCTION_CHAIN = build_chain(INSTRUCTION_RULES, Filters().instruction.model_dump())
INSTANCE_CHAIN = build_chain(INSTANCE_RULES, Filters().instance.model_dump())


def our_proposals(text: str, cut_off: bool, **options: bool) -> list[str]:
    parsed = parse_instructions(text, cut_off, **options).instructions
    return [i for i in parsed if apply_chain(INSTRUCTION_CHAIN, i).ok]


def our_instances(parse, text: str, cut_off: bool, **options: bool) -> set[tuple[str, str]]:
    kept = filter_task_instances(parse(text, cut_off, **options), INSTANCE_CHAIN,
                                 max_instances=None).kept
    return {(i.input, i.output) for i in kept}


# -- Proposals -------------------------------------------------------------------------------

PROPOSALS = [
    " Say hello in French.\n10. Tell a  joke about\ncats.\n11. Sum two numbers for me.",
    " Explain NASA to a young child.\n10. Describe the image in detail.\n11. short one",
    " Write a Program that sorts numbers.\n10. write a program to add numbers.\n"
    "11. Find the largest prime below 100.",
    "9. Tell me a joke about cats.\n10. Translate this sentence to German.",
    "\n10. Name three rivers in Europe.\n11. \"Quoted task that starts oddly.\"",
    " Compute 3.5 times 2 please.\n10.5 is not a list item\n11 . Give me a synonym for happy.",
    " Érase una vez una historia.\n10. Summarize the news article below.",
    " " + " ".join(["word"] * 151) + "\n10. Classify the sentiment of this tweet.",
    "",
]


@pytest.mark.parametrize("text", PROPOSALS)
def test_proposals_match_the_original_with_its_options(text):
    assert our_proposals(text, False, capitalize=True, strip_leading_number=False) == \
        original_proposals(text, False)
    assert our_proposals(text, True) == original_proposals(text, True) == []


def test_write_a_program_is_caught_in_any_case_without_capitalize():
    text = " Write a Program that sorts numbers.\n10. write a program to add two numbers."
    assert original_proposals(text, False) == []
    assert our_proposals(text, False) == []


def test_leading_number_is_stripped_unless_asked_for_the_original():
    text = "9. Tell me a joke about cats.\n10. Translate this sentence to German."
    assert our_proposals(text, False) == [
        "Tell me a joke about cats.", "Translate this sentence to German."]
    assert original_proposals(text, False)[0] == "9. tell me a joke about cats."
    assert parse_instructions(text, False, strip_leading_number=False).instructions[0] == \
        "9. Tell me a joke about cats."
    # A restated number after a space is a restated number too.
    assert parse_instructions(" 9. Tell me a joke.", False).instructions == ["Tell me a joke."]


# -- Input-first: the cases the side-by-side run found ---------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("Input: Norway Output: Oslo", [("Norway", "Oslo")]),
    ("Input: a\nOutput: b\nOutput: c", [("a", "b")]),
    ("Example\nInput: rhythm\nOutput: 0\nExample\nInput: blues\nOutput: 1",
     [("rhythm", "0"), ("blues", "1")]),
    ("Example:\nInput: a\nOutput: b\nExample:\nInput: c\nOutput: d", [("a", "b"), ("c", "d")]),
    ("Example 1: Input: a Output: b Example 2: Input: c Output: d", [("a", "b"), ("c", "d")]),
    ("Example 1\nInput: a Output: b\nExample 2 Input: c\nOutput: d", [("a", "b"), ("c", "d")]),
    ("Here are two examples.\nExample\nInput: a\nOutput: b", [("a", "b")]),
    ("Here are two examples.\nExample 1\nInput: a\nOutput: b", [("a", "b")]),
    ("Sure! Here is one.\nInput: a\nOutput: b", [("a", "b")]),
])
def test_input_first_found_cases(text, expected):
    assert parse_input_first(text, False) == [Instance(i, o) for i, o in expected]


def test_example_in_prose_is_not_a_header():
    text = "Example 1\nInput: a word\nOutput: Example sentences use it. An Example: none."
    assert parse_input_first(text, False) == [
        Instance("a word", "Example sentences use it. An Example: none.")]
    # Markers start a word: code that prints "Output:" is output.
    code = 'Output: print("Output:", x)\nOutput2: y'
    assert parse_input_first(code, False) == [Instance("", 'print("Output:", x)')]


def test_markers_are_case_sensitive_as_in_the_original():
    text = "Input: a\nOutput: the output: is b"
    assert parse_input_first(text, False) == [Instance("a", "the output: is b")]
    assert our_instances(parse_input_first, text, False) == original_input_first(text, False)


def test_bare_text_is_kept_unless_asked_for_the_original():
    text = "A haiku about the rain on a tin roof."
    assert our_instances(parse_input_first, text, False) == {("", text)}
    assert original_input_first(text, False) == set()
    assert parse_input_first(text, False, keep_unmarked=False) == []
    # An Input: with no Output: is not bare text: it has no output either way.
    assert parse_input_first("Input: a lone input", False) == []


# -- Input-first: a generated corpus against the truth and the original --------------------

PAIRS = [("Norway", "Oslo"), ("2 + 2", "4"),
         ("I will call you tomorrow.", "Je t'appellerai demain.")]
HEADERS = ["Example {n}", "Example {n}.", "Example {n}:", "Example", "Example:", None]
LAYOUTS = {"lines": ("\n", "\n"), "inline": (" ", "\n"), "one_line": (" ", " ")}
PREAMBLES = ["", "Here are some examples:", "Sure, here you go."]


def _render(header, layout, preamble, k, run_on):
    inner, between = LAYOUTS[layout]
    blocks = []
    for n, (inp, out) in enumerate(PAIRS[:k], start=1):
        fields = [f"Input: {inp}", f"Output: {out}"] + ([f"Output: {out} again"] if run_on else [])
        blocks.append(inner.join(([header.format(n=n)] if header else []) + fields))
    return (preamble + between if preamble else "") + between.join(blocks)


CORPUS = [(h, lay, pre, k, run_on, cut)
          for h in HEADERS for lay in LAYOUTS for pre in PREAMBLES for run_on in (False, True)
          for cut in (False, True) for k in ((1, 2, 3) if h else (1,))]


def _original_recovers(header, preamble, nothing_to_recover):
    """Where the original gets the examples right: it leaves a header's colon in the input,
    keeps a preamble before the first header as an instance unless it ends with ':' (then the
    filter drops it), and without headers leaves the preamble and 'Input:' in the input."""
    keeps_preamble = preamble != "" and not preamble.endswith(":")
    if header is None:
        return nothing_to_recover or preamble == ""
    return not keeps_preamble and (nothing_to_recover or ":" not in header)


@pytest.mark.parametrize("header,layout,preamble,k,run_on,cut", CORPUS)
def test_input_first_corpus(header, layout, preamble, k, run_on, cut):
    text = _render(header, layout, preamble, k, run_on)
    truth = set(PAIRS[:k - 1] if cut else PAIRS[:k])
    assert our_instances(parse_input_first, text, cut) == truth
    assert (original_input_first(text, cut) == truth) is \
        _original_recovers(header, preamble, not truth)


def test_corpus_is_several_hundred_and_the_original_fails_where_documented():
    assert len(CORPUS) == 540 + 36
    assert original_input_first("Example 1:\nInput: a\nOutput: b", False) == {(":\nInput: a", "b")}
    assert original_input_first("Sure!\nExample 1\nInput: a\nOutput: b", False) == {
        ("", "Sure!"), ("a", "b")}


@pytest.mark.parametrize("text", [
    "Output: A haiku about rain.", "Example 1\nOutput: A haiku about rain.",
    "Output: A haiku.\nOutput: Another haiku.", "Output: A poem.\nWith two lines.",
    "Example 1\nInput: a\nOutput: a\nExample 2\nInput: c\nOutput: d:",
    "Example 1\nInput: q\nOutput: r\nExample 2\nInput: q\nOutput: s",
    "Example 1\nInput: q\nOutput: r\nExample 2\nInput: q\nOutput: r",
    "Example 1\nA no-input answer.\nExample 2\nAnother one.",
])
@pytest.mark.parametrize("cut", [False, True])
def test_input_first_other_shapes_match_the_original(text, cut):
    assert our_instances(parse_input_first, text, cut) == original_input_first(text, cut)


# -- Output-first ---------------------------------------------------------------------------

def test_text_before_the_first_label_on_its_line():
    text = "Sure! Class label: Positive\nInput: I loved it.\nClass label: Negative\nInput: Awful."
    assert parse_output_first(text, False) == [
        Instance("I loved it.", "Positive"), Instance("Awful.", "Negative")]


def test_input_label_is_stripped_unless_asked_for_the_original():
    text = "Class label: Positive\nInput: I loved it.\nOutput: Positive"
    assert parse_output_first(text, False) == [Instance("I loved it.", "Positive")]
    raw = parse_output_first(text, False, strip_input_label=False)
    assert raw == [Instance("Input: I loved it.\nOutput: Positive", "Positive")]
    assert {(i.input, i.output) for i in raw} == original_output_first(text, False)


LABELLED = [("Positive", "I loved it."), ("Negative", "Awful, just awful."),
            ("Neutral", "It was a film.")]
OF_PREAMBLES = ["", "Here are the labels and inputs.\n", "Sure! "]


def _render_labels(layout, preamble, k, with_input, run_on):
    blocks = []
    for label, inp in LABELLED[:k]:
        fields = [f"Class label: {label}"] + ([f"Input: {inp}"] if with_input else [])
        fields += [f"Output: {label}"] if run_on else []
        blocks.append((" " if layout == "inline" else "\n").join(fields))
    return preamble + "\n".join(blocks)


OF_CORPUS = [(lay, pre, k, with_input, run_on, cut)
             for lay in ("lines", "inline") for pre in OF_PREAMBLES for k in (1, 2, 3)
             for with_input in (True, False) for run_on in (False, True) for cut in (False, True)]


@pytest.mark.parametrize("layout,preamble,k,with_input,run_on,cut", OF_CORPUS)
def test_output_first_corpus(layout, preamble, k, with_input, run_on, cut):
    text = _render_labels(layout, preamble, k, with_input, run_on)
    kept = LABELLED[:k - 1] if cut else LABELLED[:k]
    truth = {(inp if with_input else "", label) for label, inp in kept}
    assert our_instances(parse_output_first, text, cut) == truth
    assert our_instances(parse_output_first, text, cut, strip_input_label=False) == \
        original_output_first(text, cut)

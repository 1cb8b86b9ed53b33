from actors.filters import Instance
from actors.parsing import (
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

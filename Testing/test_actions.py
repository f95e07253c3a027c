import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from IBISAgentLib.agent.actions import (
    Action,
    format_action,
    format_response,
    normalized_to_pixel,
    parse_action,
    parse_response,
    pixel_to_normalized,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>liver</think><action>Positive Point (0.5000, 0.2500)</action>", Action("positive", 0.5, 0.25)),
        ("<think>x</think>\n<action>  negative   point(0.1,0.9) </action>", Action("negative", 0.1, 0.9)),
        ("blah <THINK>a</THINK> <Action>Terminate</Action><answer>done</answer> tail", Action("terminate")),
        ("<think>a</think><action>Termination</action><answer>ok</answer>", Action("terminate")),
        ("<action>Positive Point (1, 0)</action>", Action("positive", 1.0, 0.0)),
        ("<action>Positive Point (1.0000, 0.0000)</action>", Action("positive", 1.0, 0.0)),
    ],
)
def test_parse_accepts_the_grammar_with_tolerance(text, expected):
    parsed = parse_response(text)
    assert parsed.error is None
    assert parsed.action == expected


def test_parse_keeps_think_and_answer():
    parsed = parse_response(
        "<think> the mask fits \n well </think><action>Terminate</action><answer>Liver done.</answer>"
    )
    assert parsed.think == "the mask fits \n well"
    assert parsed.answer == "Liver done."


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<think>only thinking</think>", "no <action>"),
        ("<action>Positive Point (1.2, 0.5)</action>", "outside [0, 1]"),
        ("<action>Negative Point (0.5, -0.1)</action>", "outside [0, 1]"),
        ("<action>Positive Point (nan, 0.5)</action>", "not a number"),
        ("<action>Positive Point (inf, 0.5)</action>", "not a number"),
        ("<action>Positive Point (0.5.1, 0.5)</action>", "is not"),
        ("<action>Positive Point (0.5)</action>", "is not"),
        ("<action>Click (0.5, 0.5)</action>", "is not"),
        ("<action></action>", "is not"),
        ("<action>Positive Point (0.5, 0.5) and Terminate</action>", "is not"),
    ],
)
def test_parse_rejects_with_a_reason(text, reason):
    parsed = parse_response(text)
    assert parsed.action is None
    assert reason in parsed.error


@given(st.text())
def test_parse_never_raises(text):
    parsed = parse_response(text)
    assert (parsed.action is None) == (parsed.error is not None)


coords = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(st.sampled_from(["positive", "negative"]), coords, coords)
def test_format_then_parse_round_trips_to_four_decimals(kind, x, y):
    action = parse_action(format_action(Action(kind, x, y)))
    assert action.kind == kind
    assert abs(action.x - x) <= 5e-5 + 1e-12 and abs(action.y - y) <= 5e-5 + 1e-12
    assert format_action(action) == format_action(Action(kind, x, y))


@given(st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=50), st.booleans())
def test_format_response_is_parseable(think, terminate):
    action = Action("terminate") if terminate else Action("positive", 0.25, 0.75)
    parsed = parse_response(format_response(think, action, "summary"))
    assert parsed.action == action
    assert (parsed.answer == "summary") == terminate


@given(st.integers(min_value=1, max_value=4096))
def test_pixel_mapping_inverts_training_coordinates_for_every_index(size):
    for index in range(size):
        assert normalized_to_pixel(index / size, size) == index
        assert normalized_to_pixel(pixel_to_normalized(index, size), size) == index


@given(st.integers(min_value=1, max_value=4096))
def test_pixel_mapping_survives_four_decimal_formatting(size):
    for index in range(size):
        written = parse_action(format_action(Action("positive", index / size, 0.0)))
        assert normalized_to_pixel(written.x, size) == index


@given(coords, st.integers(min_value=1, max_value=10_000))
def test_pixel_mapping_picks_the_nearest_index_inside_the_image(x, size):
    index = normalized_to_pixel(x, size)
    assert 0 <= index < size
    best = min(abs(x * size - i) for i in range(max(0, index - 2), min(size, index + 3)))
    assert math.isclose(abs(x * size - index), best, abs_tol=1e-9) or index in (0, size - 1)


def test_pixel_to_normalized_rejects_outside_indices():
    with pytest.raises(ValueError):
        pixel_to_normalized(10, 10)
    with pytest.raises(ValueError):
        normalized_to_pixel(0.5, 0)


# -- untrusted model output: the action outside <think>, strict numbers, linear time -------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "<think>I could answer <action>Terminate</action> but the mask misses the tip</think>"
            "<action>Positive Point (0.5000, 0.2500)</action>",
            Action("positive", 0.5, 0.25),
        ),
        (
            "<think>maybe <action>Negative Point (0.1, 0.1)</action></think><action>Terminate</action>",
            Action("terminate"),
        ),
        (
            "<think>a</think><think>b <action>Terminate</action></think><action>Positive Point (1, 1)</action>",
            Action("positive", 1.0, 1.0),
        ),
        (
            "<think>outer <think>inner</think> so <action>Negative Point (0.1, 0.1)</action></think>"
            "<action>Terminate</action>",
            Action("terminate"),
        ),
        (
            "<THINK>a <Think>b <think>c</think> <action>Terminate</action></THINK></think>"
            "<action>Positive Point (0.2, 0.3)</action>",
            Action("positive", 0.2, 0.3),
        ),
    ],
)
def test_the_action_is_the_one_outside_think(text, expected):
    assert parse_response(text).action == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<think>I will say <action>Terminate</action>", "<think> is never closed"),
        ("<action>Positive Point (-0, 0.5)</action>", "outside [0, 1]"),
        ("<action>Positive Point (+0.5, 0.5)</action>", "outside [0, 1]"),
        ("<action>Positive Point (０.５, 0.5)</action>", "is not"),
        ("<action>Positive Point (0.5, ٠.٥)</action>", "is not"),
    ],
)
def test_signs_and_non_ascii_digits_are_refused(text, reason):
    parsed = parse_response(text)
    assert parsed.action is None
    assert reason in parsed.error


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # U+212A KELVIN SIGN folds to "k" under Unicode case-insensitivity: not a <think> tag here.
        ("<thin\u212a>x</thin\u212a><action>Terminate</action>", None),
        ("<action>Term\u0131nate</action>", "is not"),  # U+0131 dotless i
        ("<\u0430ction>Terminate</\u0430ction>", "no <action>"),  # Cyrillic a
        ("<action>Pos\u0131tive Point (0.5, 0.5)</action>", "is not"),
    ],
)
def test_look_alike_letters_are_not_the_grammar(text, reason):
    parsed = parse_response(text)
    if reason is None:
        assert parsed.think is None
        assert parsed.action == Action("terminate")
    else:
        assert parsed.action is None
        assert reason in parsed.error


@given(st.integers(1, 6), st.sampled_from(["positive", "negative"]), coords, coords)
def test_a_nested_think_keeps_its_actions_as_reasoning(depth, kind, x, y):
    inner = "".join(f"<think>level {level} " for level in range(depth))
    closing = "</think>" * depth
    quoted = f"<action>{format_action(Action('negative' if kind == 'positive' else 'positive', 0.1, 0.1))}</action>"
    text = f"<think>top {inner}x{closing} {quoted}</think><action>{format_action(Action(kind, x, y))}</action>"
    assert parse_response(text).action.kind == kind


@given(st.text(max_size=200), st.sampled_from(["positive", "negative"]), coords, coords)
def test_an_action_quoted_in_think_never_wins(noise, kind, x, y):
    quoted = format_response("", Action("terminate"), "x").replace("<think></think>", "")
    think = f"{noise.replace('<', ' ')} {quoted}"
    parsed = parse_response(f"<think>{think}</think><action>{format_action(Action(kind, x, y))}</action>")
    assert parsed.action is not None and parsed.action.kind == kind


ADVERSARIAL = {
    "unclosed think, newlines": lambda n: "<think>" + "\n" * n,
    "unclosed think, spaces then tags": lambda n: "<think>" + " </think" * (n // 8),
    "many openings": lambda n: "<think>" * (n // 7),
    "unclosed action": lambda n: "<think>a</think><action>" + " " * n,
    "long number": lambda n: "<action>Positive Point (0." + "1" * n + "</action>",
    "long digits with dots": lambda n: "<action>Positive Point (" + "1." * (n // 2) + ", 1)</action>",
    "alternating tags": lambda n: "<action></think>" * (n // 16),
    "deep nesting": lambda n: "<think>" * (n // 14) + "</think>" * (n // 16),
}


def parse_seconds(text: str) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        parse_response(text)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_parse_time_is_linear_in_the_length(name):
    """A 100 KB adversarial output parses within a small multiple of 100 x a 1 KB one (cubic before: minutes)."""
    make = ADVERSARIAL[name]
    small, large = parse_seconds(make(1_000)), parse_seconds(make(100_000))
    assert large < 0.5, f"{name}: 100 KB took {large:.3f} s"
    assert large <= 100 * max(small, 2e-5) * 5, f"{name}: 1 KB {small * 1e3:.3f} ms, 100 KB {large * 1e3:.3f} ms"

"""Answer extraction and the equivalence table the reward and the metrics rest on."""

import pytest

from codeground.pipeline.rewards import (
    extract_boxed,
    is_equivalent,
    make_math_reward,
    math_reward,
    normalize_answer,
    parseable,
)

EQUIVALENT = [
    ("1000", "1000"),
    ("1,000", "1000"),
    ("1000.", "1000"),
    ("$42$", "42"),
    ("\\boxed{7}", "7"),
    ("3.0", "3"),
    ("0.5", "\\frac{1}{2}"),
    ("\\frac12", "0.5"),
    ("\\dfrac{14}{3}", "\\frac{14}{3}"),
    ("14/3", "\\frac{14}{3}"),
    ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\frac{\\sqrt2}{2}", "\\sqrt{2}/2"),
    ("1+x^2", "x^2+1"),
    ("\\text{Evelyn}", "\\text{Evelyn}"),
    ("-3", "-3"),
    ("105263157894736842", "105263157894736842"),
    ("10\\%", "10\\%"),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}", "\\begin{pmatrix}-\\frac13\\\\ \\frac23\\end{pmatrix}"),
    ("1\\,000", "1000"),
]
NOT_EQUIVALENT = [
    ("1001", "1000"),
    ("105263157894736848", "105263157894736842"),  # integers compare exactly, no float rounding
    ("0.3333", "\\frac{1}{3}"),
    ("2", "-2"),
    ("", "1"),
    (None, "1"),
    ("x+1", "x+2"),
    ("\\frac{1}{2}", "2"),
]


@pytest.mark.parametrize(("pred", "ref"), EQUIVALENT)
def test_equivalent(pred, ref):
    assert is_equivalent(pred, ref)


@pytest.mark.parametrize(("pred", "ref"), NOT_EQUIVALENT)
def test_not_equivalent(pred, ref):
    assert not is_equivalent(pred, ref)


def test_extract_last_boxed_with_nested_braces():
    assert extract_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("no answer") is None
    assert extract_boxed("\\boxed{unclosed") is None
    assert extract_boxed("\\fbox{5}") == "5"
    assert extract_boxed("\\boxed {12}") == "12"


def test_normalize():
    assert normalize_answer(" 1,234,567 ") == "1234567"
    assert normalize_answer("+5") == "5"
    assert normalize_answer("") is None
    assert normalize_answer(None) is None


def test_parseable():
    assert parseable("12")
    assert parseable("\\frac{1}{2}")
    assert not parseable("")
    assert not parseable(None)


def test_math_reward_trl_shape():
    comps = ["I compute.\n\\boxed{4}", "\\boxed{5}", "no answer"]
    assert math_reward(comps, answer=["4", "4", "4"]) == [1.0, 0.0, 0.0]
    chat = [[{"role": "assistant", "content": "\\boxed{4}"}]]
    assert math_reward(chat, answer=["4"]) == [1.0]
    assert math_reward(["\\boxed{4}"], reference=["4"]) == [1.0]
    with pytest.raises(ValueError, match="answer"):
        math_reward(["\\boxed{4}"])
    with pytest.raises(ValueError, match="references"):
        math_reward(["a", "b"], answer=["1"])


def test_format_penalties():
    reward = make_math_reward(no_answer_penalty=0.5, unclosed_block_penalty=0.25, multiple_answers_penalty=0.1)
    assert reward.__name__ == "math_reward"
    assert reward(["\\boxed{4}"], answer=["4"]) == [1.0]
    assert reward(["nothing"], answer=["4"]) == [-0.5]
    assert reward(["```python\nprint(1)\n"], answer=["4"]) == [-0.75]
    assert reward(["\\boxed{3} no wait \\boxed{4}"], answer=["4"]) == [pytest.approx(0.9)]


def test_grounded_math_reward_pays_only_for_answers_the_interpreter_printed():
    from codeground.pipeline.rewards import grounded_math_reward

    flipped = "```python\nprint(420 - 4525)\n```\n```output\n-4105\n```\nThe answer is \\boxed{4105}."
    computed = "```python\nprint(4525 - 420)\n```\n```output\n4105\n```\nThe answer is \\boxed{4105}."
    got = grounded_math_reward([flipped, computed, computed], answer=["4105", "4105", "4106"],
                               grounded=[False, True, True])
    assert got == [0.0, 1.0, 0.0]  # correct but fixed by hand; correct and printed; printed but wrong
    with pytest.raises(ValueError, match="grounded"):
        grounded_math_reward([computed], answer=["4105"])

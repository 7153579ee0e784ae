"""Every metric on hand-written trajectories whose values are known."""

import math

import pytest

from codeground.pipeline.rollout import metrics as M

from .helpers import traj


def test_pass_at_k_unbiased_estimator():
    assert M.pass_at_k(4, 0, 1) == 0.0
    assert M.pass_at_k(4, 4, 4) == 1.0
    assert M.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert M.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert M.pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    with pytest.raises(ValueError):
        M.pass_at_k(2, 1, 3)


def _bench():
    # problem a: 4 samples, 1 correct; majority answer 7 (wrong)
    a = [traj("a", [("print(10)", "10", "ok")], "10", k=0),
         traj("a", [("print(7)", "7", "ok")], "7", k=1),
         traj("a", [("print(7)", "7", "ok")], "7", k=2),
         traj("a", [], None, k=3)]
    # problem b: 4 samples, 3 correct (one answered "10.0"), majority correct
    b = [traj("b", [("print(10)", "10", "ok")], "10", k=0),
         traj("b", [("print(10.0)", "10.0", "ok")], "10.0", k=1),
         traj("b", [("x", "NameError", "error"), ("print(10)", "10", "ok")], "10", k=2),
         traj("b", [("print(3)", "3", "ok")], "3", k=3)]
    return a + b


def test_accuracy_metrics():
    m = M.accuracy_metrics(_bench())
    assert m["problems"] == 2
    assert m["avg@4"] == pytest.approx((1 / 4 + 3 / 4) / 2)
    assert m["pass@1"] == pytest.approx(m["avg@4"])
    assert m["pass@4"] == 1.0
    assert m["pass@2"] == pytest.approx(((1 - 3 / 6) + 1.0) / 2)
    assert m["maj@4"] == pytest.approx(0.5)  # a: 7 wins (wrong); b: 10 wins (10 and 10.0 grouped)


def test_majority_groups_equivalent_answers_and_ignores_missing():
    assert M.majority_answer(["1/2", "0.5", "3", None, None, None]) == "1/2"
    assert M.majority_answer([None, None]) is None
    assert M.majority_answer(["3", "4"]) == "3"  # tie: first seen


def test_grounding():
    grounded = traj("g", [("print(6*7)", "The result is 42.0", "ok")], "42", reference="42")
    assert M.is_grounded(grounded)
    line = traj("g", [("print(r'\\frac{1}{2}')", "\\frac{1}{2}", "ok")], "\\frac{1}{2}", reference="0.5")
    assert M.is_grounded(line)
    separators = traj("g", [("print(f'{1234567:,}')", "1,234,567", "ok")], "1234567", reference="1234567")
    assert M.is_grounded(separators)
    mental = traj("g", [("print(6*7)", "42", "ok")], "43", reference="43")
    assert not M.is_grounded(mental)
    no_answer = traj("g", [("print(1)", "1", "ok")], None)
    assert not M.is_grounded(no_answer)
    substring = traj("g", [("print(142)", "142", "ok")], "42", reference="42")
    assert not M.is_grounded(substring)  # numbers match whole, not as substrings


def test_behaviour_metrics():
    ts = [
        traj("a", [("x = 1\n\nprint(x)", "1", "ok"), ("print(10)", "10", "ok")], "10", tokens=(100, 60, 20)),
        traj("b", [("1/0", "ZeroDivisionError", "error"), ("print(9)", "9", "ok")], "11", tokens=(50, 40, 10)),
        traj("c", [], "10", tokens=(10, 0, 0)),
    ]
    m = M.behaviour_metrics(ts)
    assert m["samples"] == 3
    assert m["answer_rate"] == 1.0
    assert m["grounding_rate"] == pytest.approx(1 / 3)  # only a's 10 came from the interpreter
    assert m["tool_calls"] == pytest.approx(4 / 3)
    assert m["tokens"] == pytest.approx((120 + 60 + 10) / 3)
    assert m["model_tokens"] == pytest.approx(160 / 3)
    assert m["lines_of_code"] == pytest.approx((3 + 2 + 0) / 3)  # blank lines do not count
    assert m["nl_share"] == pytest.approx((40 / 100 + 10 / 50 + 10 / 10) / 3)
    assert m["code_error_rate"] == pytest.approx(1 / 4)


def test_nl_share_falls_back_to_characters_without_token_counts():
    t = traj("a", [("print(1)", "1", "ok")], "1", reference="1", prose="")
    prose_chars = len("The answer is \\boxed{1}.")
    assert t.nl_fraction() == pytest.approx(prose_chars / len(t.model_text()))


def test_recovery_after_consecutive_errors():
    err = ("bad", "Error", "error")
    ok10 = ("print(10)", "10", "ok")
    ts = [
        traj("r1", [err, ok10], "10"),  # 1 error, recovered
        traj("r2", [err, err, ok10], "10"),  # 2 in a row, recovered
        traj("r3", [err, err, err], "9"),  # 3 in a row, not recovered
        traj("r4", [err, ok10, err, ok10], "10"),  # runs of 1 only, recovered
        traj("r5", [("t", "TimeoutError", "timeout")] * 5 + [ok10], "10"),  # timeouts count as errors
        traj("r6", [ok10], "10"),  # no error: not in any recovery denominator
    ]
    m = M.behaviour_metrics(ts)
    assert m["recovery@1_samples"] == 5 and m["recovery@1"] == pytest.approx(4 / 5)
    assert m["recovery@2_samples"] == 3 and m["recovery@2"] == pytest.approx(2 / 3)
    assert m["recovery@3_samples"] == 2 and m["recovery@3"] == pytest.approx(1 / 2)
    assert m["recovery@4_samples"] == 1 and m["recovery@4"] == 1.0
    assert m["recovery@5_samples"] == 1 and m["recovery@5"] == 1.0
    assert M.consecutive_error_runs(["ok", "error", "timeout", "ok", "error"]) == 2
    assert M.consecutive_error_runs(["output_truncated", "ok"]) == 0


def test_recovery_without_errors_is_nan():
    m = M.behaviour_metrics([traj("a", [("print(10)", "10", "ok")], "10")])
    assert math.isnan(m["recovery@1"]) and m["recovery@1_samples"] == 0


def test_dropped_samples_are_excluded_and_counted():
    good = traj("a", [("print(10)", "10", "ok")], "10")
    infra = traj("a", [], None, k=1, stop="infra_error")
    infra.infra_error = "sandbox failed 3 times"
    gen = traj("b", [], None, stop="generation_error")
    retried = traj("c", [("print(10)", "10", "ok")], "10")
    retried.infra_retries = 2
    m = M.evaluate([good, infra, gen, retried])
    assert m["problems"] == 2 and m["samples"] == 2
    assert m["avg@1"] == 1.0
    assert m["infra_drops"] == 1 and m["generation_errors"] == 1 and m["infra_retries"] == 2
    assert m["stop.infra_error"] == 0.25


def test_tool_call_histogram():
    ts = [traj("a", [("p", "1", "ok")] * n, "1", reference="1", k=i) for i, n in enumerate([0, 1, 1, 3])]
    assert M.tool_call_histogram(ts) == {0: 1, 1: 2, 3: 1}

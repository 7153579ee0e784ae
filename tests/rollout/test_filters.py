"""Every distill filter, one trajectory each, and the drop table."""

from codeground.pipeline.rollout.filters import apply_filters, drop_table, failed_checks
from codeground.pipeline.spec import DistillFilters

from .helpers import traj

OK = ("print(10)", "10", "ok")
F = DistillFilters(require_correct=True, require_all_code_runs=True, min_code_blocks=2,
                   max_natural_language_fraction=0.5)


def good(pid="p", k=0):
    return traj(pid, [OK, OK], "10", k=k, tokens=(100, 80, 10))


def test_good_trajectory_passes():
    assert failed_checks(good(), F) == []


def test_each_filter():
    cases = {
        "unfinished": traj("p", [OK, OK], None, stop="max_tokens", tokens=(100, 80, 10)),
        "incorrect": traj("p", [OK, OK], "11", tokens=(100, 80, 10)),
        "code_error": traj("p", [("x", "NameError", "error"), OK], "10", tokens=(100, 80, 10)),
        "too_few_code_blocks": traj("p", [OK], "10", tokens=(100, 80, 10)),
        "too_much_natural_language": traj("p", [OK, OK], "10", tokens=(100, 50, 10)),  # exactly 0.5: not below
        "infra_error": traj("p", [], None, stop="infra_error"),
        "generation_error": traj("p", [], None, stop="generation_error"),
    }
    for reason, t in cases.items():
        assert failed_checks(t, F)[0] == reason, reason


def test_timeouts_count_as_code_errors_and_truncated_output_does_not():
    assert "code_error" in failed_checks(traj("p", [("x", "TimeoutError", "timeout"), OK], "10", tokens=(100, 80, 10)), F)
    assert failed_checks(traj("p", [("x", "y" * 10, "output_truncated"), OK], "10", tokens=(100, 80, 10)), F) == []


def test_filters_can_be_switched_off():
    loose = DistillFilters(require_correct=False, require_all_code_runs=False, min_code_blocks=0,
                           max_natural_language_fraction=1.0)
    assert failed_checks(traj("p", [("x", "E", "error")], "11", tokens=(100, 10, 5)), loose) == []
    assert failed_checks(traj("p", [], None, stop="no_answer"), loose) == ["unfinished"]


def test_dedupe_and_table():
    a, dup, other_problem = good("p", 0), good("p", 1), good("q", 0)
    bad = traj("p", [OK], "11", k=2, tokens=(100, 80, 10))
    trajs = [a, dup, other_problem, bad]
    kept, dropped = apply_filters(trajs, F, dedupe=True)
    assert kept == [a, other_problem]
    assert [(t, r) for t, r in dropped] == [(dup, "duplicate"), (bad, "incorrect")]
    table = drop_table(trajs, kept, dropped, F)
    rows = {r["reason"]: r for r in table["reasons"]}
    assert table["total"] == 4 and table["kept"] == 2 and table["dropped"] == 2
    assert rows["duplicate"]["dropped"] == 1 and rows["incorrect"]["dropped"] == 1
    assert rows["too_few_code_blocks"]["failing_alone"] == 1 and rows["too_few_code_blocks"]["dropped"] == 0
    kept2, _ = apply_filters(trajs, F, dedupe=False)
    assert len(kept2) == 3

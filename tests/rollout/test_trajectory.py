"""The JSONL schema round-trips and loads as a datasets.Dataset; the report renders."""

import json

import pytest

from codeground.pipeline.rollout.report import render
from codeground.pipeline.rollout.trajectory import SCHEMA, Trajectory, read_jsonl, to_dataset, write_jsonl

from .helpers import traj


def test_jsonl_round_trip_and_dataset(tmp_path):
    ts = [traj("a", [("print(10)", "10", "ok")], "10"), traj("b", [("1/0", "E", "error")], None)]
    ts[0].segments[0].token_ids = [1, 2, 3]
    path = tmp_path / "t.jsonl"
    assert write_jsonl(path, ts) == 2
    first = json.loads(path.read_text().splitlines()[0])
    assert first["schema"] == SCHEMA and "token_ids" not in json.dumps(first)
    assert first["segments"][1] == {"role": "interpreter", "text": "```output\n10\n```\n", "status": "ok", "error_type": None}
    back = read_jsonl(path)
    assert [t.completion_text() for t in back] == [t.completion_text() for t in ts]
    assert back[1].code_blocks() == [("1/0", "error")]
    ds = to_dataset(path)
    assert len(ds) == 2 and ds[0]["completion"] == ts[0].completion_text() and ds[0]["correct"] is True


def test_unknown_schema_is_refused(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"schema": "other/v9", "problem_id": "a", "prompt": []}) + "\n")
    with pytest.raises(ValueError, match=r"t\.jsonl:1"):
        read_jsonl(p)


def test_code_blocks_marks_unexecuted_block():
    t = Trajectory(problem_id="a", prompt=[], stop_reason="max_tool_calls")
    from codeground.pipeline.rollout.trajectory import Segment

    t.segments = [Segment("model", "```python\nprint(1)\n```\n")]
    assert t.code_blocks() == [("print(1)", None)]
    assert t.lines_of_code() == 1


def test_report_renders_with_plots():
    doc = {"model": "m", "samples": 4, "temperature": 0.6,
           "benchmarks": {"b": {"avg@4": 0.5, "pass@4": 0.75, "maj@4": 0.5, "problems": 2}},
           "overall": {"grounding_rate": 0.9, "recovery@1": 0.5, "recovery@1_samples": 4, "recovery@2": float("nan")},
           "tool_call_histogram": {"0": 1, "2": 3}}
    out = render(doc)
    assert out.count("data:image/png;base64,") == 3
    assert "grounding rate" in out and "<table>" in out

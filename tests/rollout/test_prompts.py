"""The few-shot templates parse, and their worked examples print what they claim (they teach the format)."""

import contextlib
import io

import pytest

from codeground.pipeline.errors import StageError
from codeground.pipeline.rewards import extract_boxed
from codeground.pipeline.rollout.codeblocks import iter_blocks
from codeground.pipeline.rollout.prompts import build_messages, load_template, parse_template


@pytest.mark.parametrize("name", ["code_reasoning", "thinc"])
def test_examples_are_truthful(name):
    tpl = load_template(name)
    assert len(tpl.shots) >= 3
    for _, answer in tpl.shots:
        blocks = iter_blocks(answer)
        assert blocks, "every example writes code"
        outputs = answer.split("```output\n")[1:]
        ns: dict = {}
        for block, out in zip(blocks, outputs, strict=True):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(block.code, ns)  # our own worked examples, not model code
            assert buf.getvalue() == out.split("```")[0]
        assert extract_boxed(answer) is not None
        assert answer.splitlines()[0] and not answer.startswith("```")  # one planning sentence first


def test_messages_shape():
    msgs = build_messages("What is 2+2?", shots=2)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[-1]["content"] == "What is 2+2?"
    assert [m["role"] for m in build_messages("q", shots=0)] == ["system", "user"]
    with pytest.raises(StageError, match="worked examples"):
        build_messages("q", shots=9)


def test_custom_template_file(tmp_path):
    p = tmp_path / "mine.md"
    p.write_text("## user\nExample?\n## assistant\n```python\nprint(1)\n```\n## user\nSolve: {problem}\n")
    msgs = build_messages("x", shots=1, template=str(p))
    assert msgs[0]["role"] == "user" and msgs[-1]["content"] == "Solve: x"


def test_bad_templates():
    with pytest.raises(StageError, match="last section"):
        parse_template("## system\nhi\n## user\nno placeholder\n")
    with pytest.raises(StageError, match="alternate"):
        parse_template("## user\na\n## user\nb\n## user\n{problem}\n")
    with pytest.raises(StageError, match="not found"):
        load_template("does-not-exist")

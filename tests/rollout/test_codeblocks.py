"""Precise code-block matching and output capping (what the interpreter runs, what the model sees)."""

from codeground.pipeline.rollout.codeblocks import (
    closes_block,
    first_closed_block,
    format_output,
    has_open_block,
    iter_blocks,
    split_prose_code,
)


def test_one_block_with_plan_sentence():
    text = "I will add them.\n```python\nprint(1 + 2)\n```\nThe answer is 3."
    blocks = iter_blocks(text)
    assert [b.code for b in blocks] == ["print(1 + 2)"]
    assert text[blocks[0].end:] == "The answer is 3."
    prose, codes = split_prose_code(text)
    assert prose == "I will add them.\nThe answer is 3."
    assert codes == ["print(1 + 2)"]


def test_only_python_fences_open_blocks():
    text = "```output\n3\n```\n```js\nx\n```\n```\nplain\n```\n"
    assert iter_blocks(text) == []
    assert not closes_block(text)


def test_fence_must_start_the_line_and_stand_alone():
    assert iter_blocks("say ```python\nx\n```\n") == []
    # a line starting with ``` followed by text does not close the block
    assert not closes_block("```python\ns = '''\n```not a fence\n")
    assert has_open_block("```python\ns = '''\n```not a fence\n")


def test_fence_at_the_very_end_closes_only_when_generation_ended():
    text = "```python\nprint(1)\n```"
    assert not closes_block(text)  # may still become ```python (a new block)
    assert closes_block(text, final=True)
    assert closes_block(text + "\n")


def test_first_closed_block_ignores_later_text():
    text = "```python\nprint(1)\n```\n```output\nhallucinated\n```\n```python\nprint(2)\n```\n"
    b = first_closed_block(text)
    assert b is not None and b.code == "print(1)"
    assert text[: b.end] == "```python\nprint(1)\n```\n"


def test_never_closed_block():
    text = "plan\n```python\nwhile True:\n    pass\n"
    assert first_closed_block(text) is None
    assert has_open_block(text)
    assert not closes_block(text, final=True)


def test_ten_thousand_blocks_parse_quickly():
    text = "```python\nprint(1)\n```\n" * 10_000
    assert len(iter_blocks(text)) == 10_000
    assert first_closed_block(text).code == "print(1)"


def test_py_alias_and_trailing_spaces():
    assert [b.code for b in iter_blocks("```py  \nx=1\n```  \n")] == ["x=1"]


def test_empty_block():
    assert [b.code for b in iter_blocks("```python\n```\n")] == [""]


def test_output_block_and_truncation_marker():
    assert format_output("3\n", 100) == "```output\n3\n```\n"
    assert format_output("3", 100) == "```output\n3\n```\n"
    assert format_output("", 100) == "```output\n```\n"
    big = "x" * 5_000_000
    out = format_output(big, 1000)
    assert len(out) < 1100
    assert "[output truncated: 4999000 more characters]" in out
    assert out.endswith("\n```\n")

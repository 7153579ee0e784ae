"""Precise fenced code-block matching, as in CIR: what counts as a block the interpreter runs.

Called by the rollout engine (to decide when a generation turn ends and what to execute), by the
generation backends (stop criteria) and by the metrics (to split model text into code and prose).

The rule: a block opens with a line that is exactly ```` ```python ```` (or ```` ```py ````; trailing
spaces allowed) and closes at the next line that is exactly ```` ``` ````. The closing fence must be
followed by a newline or the end of the generation; ```` ```output ```` blocks the model writes itself
are prose, never executed. Text after the closing fence in the same turn is discarded by the engine
(the model must not see its own hallucinated output).

What it does not do: parse Python, or accept other languages, tildes or indented fences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPEN_RE = re.compile(r"(?m)^```(?:python|py)[ \t]*\n")
# A closing fence: a line that is exactly ``` (spaces allowed), ending in a newline or the text end.
CLOSE_RE = re.compile(r"(?m)^```[ \t]*(?:\n|\Z)")
OUTPUT_OPEN = "```output\n"
FENCE_CLOSE = "```"


@dataclass(frozen=True)
class CodeBlock:
    """A closed python block inside a text: ``code`` without the fences; ``end`` is just past the fence line."""

    code: str
    start: int  # offset of the opening fence
    end: int  # offset just past the closing fence (and its newline, if any)


def iter_blocks(text: str) -> list[CodeBlock]:
    """Every closed python block in ``text``, in order."""
    out: list[CodeBlock] = []
    pos = 0
    while True:
        m = OPEN_RE.search(text, pos)
        if m is None:
            return out
        c = CLOSE_RE.search(text, m.end())
        if c is None:
            return out
        code = text[m.end():c.start()]
        out.append(CodeBlock(code=code[:-1] if code.endswith("\n") else code, start=m.start(), end=c.end()))
        pos = c.end()


def first_closed_block(text: str) -> CodeBlock | None:
    """The first closed python block, or None: where a generation turn ends."""
    m = OPEN_RE.search(text)
    if m is None:
        return None
    c = CLOSE_RE.search(text, m.end())
    if c is None:
        return None
    code = text[m.end():c.start()]
    return CodeBlock(code=code[:-1] if code.endswith("\n") else code, start=m.start(), end=c.end())


def closes_block(text: str, *, final: bool = False) -> bool:
    """Whether ``text`` (one generation turn so far) contains a closed python block.

    While generating (``final=False``) a fence at the very end without its newline does not count
    yet: ```` ``` ```` may still grow into ```` ```python ````. At the end of a generation it does.
    """
    block = first_closed_block(text)
    if block is None:
        return False
    return final or block.end < len(text) or text.endswith("\n")


def has_open_block(text: str) -> bool:
    """Whether ``text`` ends inside an unclosed python block (a never-closed block)."""
    pos = 0
    while True:
        m = OPEN_RE.search(text, pos)
        if m is None:
            return False
        c = CLOSE_RE.search(text, m.end())
        if c is None:
            return True
        pos = c.end()


def split_prose_code(text: str) -> tuple[str, list[str]]:
    """Model text split into its prose (fences removed) and the code of its closed python blocks."""
    blocks = iter_blocks(text)
    prose, pos = [], 0
    for b in blocks:
        prose.append(text[pos:b.start])
        pos = b.end
    prose.append(text[pos:])
    return "".join(prose), [b.code for b in blocks]


def format_output(output: str, max_chars: int) -> str:
    """The ```output block appended after a cell, capped at ``max_chars`` with a truncation marker."""
    if len(output) > max_chars:
        cut = len(output) - max_chars
        output = output[:max_chars] + f"\n... [output truncated: {cut} more characters]"
    if output and not output.endswith("\n"):
        output += "\n"
    return f"{OUTPUT_OPEN}{output}{FENCE_CLOSE}\n"

"""Few-shot chat prompts from editable Markdown templates (``pipeline/templates/*.md``).

Called by the distill and evaluate stages, and by the grpo stage, to turn a problem into the chat
messages a rollout starts from. The default template is THINC-style (one planning sentence, then
code, answer in ``\\boxed{}``) with three worked examples; ``CODEGROUND_PROMPT_TEMPLATE`` or the
``template`` argument point at another file (a path, or a name in the templates folder).

Template format: sections start with ``## system``, ``## user`` or ``## assistant`` on a line of their
own; an HTML comment before the first section is ignored. After the optional system section come
user/assistant pairs (the worked examples); the last ``## user`` section is the question and holds
``{problem}``. Examples are given as real chat turns, so the model sees its own format.

What it does not do: check that the examples' outputs are what Python prints (a unit test does).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import StageError

DEFAULT_TEMPLATE = "code_reasoning"
_SECTION = re.compile(r"(?m)^## (system|user|assistant)[ \t]*$")


@dataclass(frozen=True)
class PromptTemplate:
    system: str | None
    shots: tuple[tuple[str, str], ...]  # (user, assistant) worked examples
    question: str  # contains {problem}

    def messages(self, problem: str, shots: int = 3) -> list[dict[str, str]]:
        """Chat messages for ``problem`` with the first ``shots`` worked examples."""
        if shots > len(self.shots):
            raise StageError(f"prompt template has {len(self.shots)} worked examples; {shots} requested")
        msgs: list[dict[str, str]] = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        for user, assistant in self.shots[:shots]:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        msgs.append({"role": "user", "content": self.question.replace("{problem}", problem.strip())})
        return msgs


def parse_template(text: str, source: str = "<template>") -> PromptTemplate:
    text = re.sub(r"(?s)<!--.*?-->", "", text, count=1)
    parts = _SECTION.split(text)
    sections = [(parts[i], parts[i + 1].strip("\n")) for i in range(1, len(parts), 2)]
    if not sections or sections[-1][0] != "user" or "{problem}" not in sections[-1][1]:
        raise StageError(f"{source}: the last section must be '## user' containing {{problem}}")
    system = None
    if sections[0][0] == "system":
        system = sections[0][1].strip()
        sections = sections[1:]
    body, question = sections[:-1], sections[-1][1].strip()
    if len(body) % 2 or any(r != ("user" if i % 2 == 0 else "assistant") for i, (r, _) in enumerate(body)):
        raise StageError(f"{source}: worked examples must alternate '## user' and '## assistant'")
    shots = tuple((body[i][1].strip(), body[i + 1][1].strip()) for i in range(0, len(body), 2))
    return PromptTemplate(system=system, shots=shots, question=question)


@lru_cache(maxsize=16)
def load_template(template: str | None = None) -> PromptTemplate:
    """A template by path or by name in ``pipeline/templates`` (default: $CODEGROUND_PROMPT_TEMPLATE or code_reasoning)."""
    template = template or os.environ.get("CODEGROUND_PROMPT_TEMPLATE") or DEFAULT_TEMPLATE
    path = Path(template)
    if path.suffix == ".md" and path.exists():
        return parse_template(path.read_text(encoding="utf-8"), str(path))
    name = template if template.endswith(".md") else f"{template}.md"
    try:
        text = resources.files("codeground.pipeline.templates").joinpath(name).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        raise StageError(f"prompt template {template!r} not found (a .md path or a name in pipeline/templates)") from None
    return parse_template(text, name)


def build_messages(problem: str, shots: int = 3, template: str | None = None) -> list[dict[str, str]]:
    """The chat messages a rollout for ``problem`` starts from."""
    return load_template(template).messages(problem, shots)

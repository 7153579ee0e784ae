"""Error types shared by the whole package.

Every error raised on purpose by codeground derives from :class:`CodegroundError`, so the CLI can
print one clean line instead of a traceback. Subclasses say whether retrying can help: a
:class:`SpecError` never goes away by itself (the operator treats it as permanent), an
:class:`InfrastructureError` may (the operator and the rollouts retry it with a delay).
"""

from __future__ import annotations


class CodegroundError(Exception):
    """Base class of every error codeground raises on purpose."""


class SpecError(CodegroundError):
    """A TrainingRun or Sandbox document is invalid.

    ``errors`` holds one ``(path, message)`` pair per problem, where ``path`` is a dotted field
    path such as ``spec.stages[1].sft.learningRate``; ``source`` names the file, if any.
    """

    def __init__(self, errors: list[tuple[str, str]], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        super().__init__(self.format())

    def format(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(f"{prefix}{path}: {msg}" if path else f"{prefix}{msg}" for path, msg in self.errors)


class ArtifactError(CodegroundError):
    """Reading or writing the artifact store failed (missing object, bad checksum, upload failure)."""


class StageError(CodegroundError):
    """A stage cannot run or failed with a reason a user can act on."""


class InfrastructureError(CodegroundError):
    """Something outside the model's control failed (sandbox pod gone, connection refused, 5xx).

    Never shown to the model as code output; callers retry or drop the sample with a recorded reason.
    """

"""Limits and settings of one sandbox server (`codeground sandbox serve`).

Who calls it: the service (`service.py`) builds one :class:`SandboxConfig` from CLI flags, the operator's
Sandbox spec reaches it through :meth:`SandboxConfig.from_limits` (camelCase, Kubernetes quantities),
tests and `local_sandbox` build it directly. Validation happens here, when the config is built, so a bad
value fails at start-up with a message naming the field, not in the middle of a rollout.

What it does not guarantee: that the host can actually honour the numbers (e.g. 64 sessions of 1 GiB on
a 16 GiB node); memory is enforced per process (RLIMIT_AS), not for a whole session.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from codeground.pipeline.errors import CodegroundError

_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]i?|[kmgtpe]|)\s*$")
_UNITS = {
    "": 1,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
}


class SandboxConfigError(CodegroundError):
    """A sandbox limit is invalid; the message names the field, the value and what was expected."""


def parse_quantity(value: int | float | str, field: str = "memory") -> int:
    """Parse a Kubernetes quantity ("1Gi", "512Mi", "1G", 1073741824) into bytes."""
    if isinstance(value, bool):
        raise SandboxConfigError(f"{field}: expected a byte count or a quantity like '1Gi', got {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    m = _QUANTITY.match(str(value))
    if not m:
        raise SandboxConfigError(
            f"{field}: {value!r} is not a quantity; expected e.g. '1Gi', '512Mi', '2G' or a byte count")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


@dataclass
class SandboxConfig:
    """Every limit of one sandbox server; each field's comment says what it bounds."""

    timeout_seconds: float = 10.0  # wall clock of one execute call; past it the session is killed and restarted
    memory_bytes: int = 1 << 30  # address-space cap (RLIMIT_AS) of every process in a session
    max_processes: int = 64  # processes + threads of a session (RLIMIT_NPROC inside its own sandbox)
    max_output_bytes: int = 64 * 1024  # stdout+stderr kept per call; the rest is cut and a marker added
    max_file_bytes: int = 64 << 20  # largest single file a session may write (RLIMIT_FSIZE)
    scratch_bytes: int = 256 << 20  # size of the session's tmpfs scratch dir (/tmp); its contents live in RAM
    max_sessions: int = 64  # open sessions per server; one more gets 429 with Retry-After
    session_idle_seconds: float = 600.0  # a session unused this long is closed by the reaper
    warm_pool: int = 4  # interpreters started ahead of time so creating a session costs milliseconds
    # "gvisor": a runsc sandbox per session (local); "pod": the pod runs under gVisor, sessions get their own
    # uid in it (Kubernetes, where runsc cannot nest); "none": only via --unsafe-no-isolation (debugging)
    isolation: Literal["gvisor", "pod", "none"] = "gvisor"
    echo_last_expression: bool = True  # like a notebook: a cell ending in an expression prints its repr
    preload: tuple[str, ...] = ()  # modules imported by warm interpreters (e.g. numpy): fast first import
    # Refuse /v1 requests from the server's own addresses. None = only with isolation "pod", where session
    # code shares the pod's network and could otherwise drive the API (e.g. run code in another session).
    deny_local_clients: bool | None = None
    python_executable: str = ""  # interpreter of the sessions; "" = the service's own (with its packages)
    runsc_path: str = "runsc"  # the gVisor runtime binary (looked up on PATH)
    runsc_platform: str = "ptrace"  # gVisor platform; ptrace works in nested/unprivileged hosts
    max_code_bytes: int = 1 << 20  # largest accepted cell source
    traceback_frames: int = 8  # innermost frames kept in the short traceback shown to the model
    pool_start_concurrency: int = 2  # sandboxes booted at once when refilling the pool (CPU-heavy)
    # Cells executing at once; more wait their turn, and the wait does not count toward the timeout
    # (48 trivial cells at once on 2 cores took 2 s each under gVisor-ptrace and some hit a 5 s limit).
    # 0 = 2 x the CPUs this process may run on.
    max_parallel_cells: int = 0

    def __post_init__(self) -> None:
        positive = ("timeout_seconds", "memory_bytes", "max_processes", "max_output_bytes", "max_file_bytes",
                    "scratch_bytes", "max_sessions", "session_idle_seconds", "max_code_bytes",
                    "pool_start_concurrency")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise SandboxConfigError(f"sandbox.{name}: expected a positive number, got {value!r}")
        for name in ("warm_pool", "traceback_frames", "max_parallel_cells"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise SandboxConfigError(f"sandbox.{name}: expected an integer >= 0, got {value!r}")
        if self.isolation not in ("gvisor", "pod", "none"):
            raise SandboxConfigError(
                f"sandbox.isolation: expected 'gvisor', 'pod' or 'none', got {self.isolation!r}")
        if self.memory_bytes < 64 << 20:
            raise SandboxConfigError(
                f"sandbox.memory_bytes: {self.memory_bytes} is too small for a Python interpreter; use >= 64Mi")
        if self.max_processes < 4:
            raise SandboxConfigError(
                f"sandbox.max_processes: {self.max_processes} leaves no room for the interpreter; use >= 4")
        # More warm interpreters than sessions would only waste memory (e.g. maxSessions 2 with the default pool).
        self.warm_pool = min(self.warm_pool, self.max_sessions)

    def parallel_cells(self) -> int:
        """``max_parallel_cells``, with 0 resolved against the CPUs this process may use."""
        if self.max_parallel_cells:
            return self.max_parallel_cells
        import os

        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cpus = os.cpu_count() or 1
        return 2 * cpus

    # camelCase name in a Sandbox spec's `limits` -> (field, converter)
    _LIMIT_KEYS: ClassVar[dict[str, tuple[str, Any]]] = {
        "timeoutSeconds": ("timeout_seconds", float),
        "memory": ("memory_bytes", parse_quantity),
        "maxProcesses": ("max_processes", int),
        "maxOutputBytes": ("max_output_bytes", parse_quantity),
        "maxFileBytes": ("max_file_bytes", parse_quantity),
        "scratch": ("scratch_bytes", parse_quantity),
        "scratchBytes": ("scratch_bytes", parse_quantity),
        "maxSessions": ("max_sessions", int),
        "sessionIdleSeconds": ("session_idle_seconds", float),
        "warmPool": ("warm_pool", int),
        "maxParallelCells": ("max_parallel_cells", int),
        "preload": ("preload", lambda v: tuple(v.split(",") if isinstance(v, str) else v)),
    }

    @classmethod
    def from_limits(cls, limits: Mapping[str, Any] | None, **overrides: Any) -> SandboxConfig:
        """Build a config from a Sandbox spec's camelCase `limits` dict; unknown keys are an error."""
        kwargs: dict[str, Any] = {}
        for key, value in (limits or {}).items():
            if value is None:
                continue
            if key not in cls._LIMIT_KEYS:
                known = ", ".join(sorted(cls._LIMIT_KEYS))
                raise SandboxConfigError(f"limits.{key}: unknown limit; expected one of {known}")
            name, convert = cls._LIMIT_KEYS[key]
            try:
                kwargs[name] = convert(value, f"limits.{key}") if convert is parse_quantity else convert(value)
            except (TypeError, ValueError) as e:
                raise SandboxConfigError(f"limits.{key}: {value!r} is not valid ({e})") from None
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def denies_local_clients(self) -> bool:
        return self.isolation == "pod" if self.deny_local_clients is None else self.deny_local_clients

    def summary(self) -> dict[str, Any]:
        """The effective config as a plain dict (logged once at start, served on /readyz)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

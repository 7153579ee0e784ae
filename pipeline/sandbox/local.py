"""Start a sandbox service on this machine for the length of a `with` block.

Who calls it: `codeground run` (local backend) and the tests. It runs
`python -m codeground.pipeline.sandbox serve` in a subprocess on 127.0.0.1 with a free port, waits until
/readyz answers, yields the base URL and stops the server (and with it every sandbox) on exit.

If the calling process dies without leaving the `with` block (SIGKILL, a test runner's hard timeout),
the server is killed with it (PR_SET_PDEATHSIG), and its sandboxes with the server. Note: the signal
follows the *thread* that started the server, so start it from a thread that outlives the block.

What it does not guarantee: that the port stays free between choosing it and the server binding it (a
rare race; the start then fails with the server's log in the error).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import fields

import httpx

from codeground.pipeline.errors import InfrastructureError

from .config import SandboxConfig

_FLAGS = {  # SandboxConfig field -> `serve` flag
    "timeout_seconds": "--timeout-seconds", "memory_bytes": "--memory", "max_processes": "--max-processes",
    "max_output_bytes": "--max-output-bytes", "max_file_bytes": "--max-file-bytes",
    "scratch_bytes": "--scratch-bytes", "max_sessions": "--max-sessions",
    "session_idle_seconds": "--session-idle-seconds", "warm_pool": "--warm-pool", "runsc_path": "--runsc", "python_executable": "--python",
    "runsc_platform": "--runsc-platform", "max_parallel_cells": "--max-parallel-cells",
}


def _die_with_parent() -> None:
    """In the server child: SIGKILL it when the process that started it dies (no orphaned servers)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_argv(config: SandboxConfig, port: int, *, unsafe_no_isolation: bool = False) -> list[str]:
    """The command line that starts a server with exactly `config`."""
    argv = [sys.executable, "-m", "codeground.pipeline.sandbox", "serve", "--host", "127.0.0.1", "--port", str(port)]
    defaults = SandboxConfig()
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in _FLAGS and value != getattr(defaults, f.name):
            argv += [_FLAGS[f.name], str(value)]
    if config.preload:
        argv += ["--preload", ",".join(config.preload)]
    if not config.echo_last_expression:
        argv.append("--no-echo-last-expression")
    if unsafe_no_isolation or config.isolation == "none":
        argv.append("--unsafe-no-isolation")
    elif config.isolation == "pod":
        argv += ["--isolation", "pod"]
    if config.deny_local_clients is False:
        argv.append("--allow-local-clients")
    return argv


@contextlib.contextmanager
def local_sandbox(config: SandboxConfig | None = None, *, unsafe_no_isolation: bool = False,
                  start_timeout: float = 120.0) -> Iterator[str]:
    """Start `codeground sandbox serve` on 127.0.0.1 (free port) in a subprocess, wait for health,
    yield the base URL, stop it on exit."""
    with local_server(config, unsafe_no_isolation=unsafe_no_isolation, start_timeout=start_timeout) as (_, url):
        yield url


@contextlib.contextmanager
def local_server(config: SandboxConfig | None = None, *, unsafe_no_isolation: bool = False,
                 start_timeout: float = 120.0) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Like :func:`local_sandbox`, also yielding the server process (benchmarks count its CPU)."""
    config = config or SandboxConfig()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(serve_argv(config, port, unsafe_no_isolation=unsafe_no_isolation),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        try:
            _wait_ready(proc, url, log, start_timeout, need_boot=config.warm_pool > 0)
            yield proc, url
        finally:
            stop_server(proc)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: object, timeout: float, need_boot: bool) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InfrastructureError(f"sandbox server exited with {proc.returncode}: {_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200 or (r.status_code == 503 and not need_boot):
                return
        time.sleep(0.1)
    stop_server(proc)
    raise InfrastructureError(f"sandbox server at {url} not ready after {timeout:.0f}s: {_tail(log)}")


def _tail(log: object) -> str:
    f = log  # a binary temporary file
    f.seek(0)  # type: ignore[attr-defined]
    return f.read()[-3000:].decode("utf-8", "replace")  # type: ignore[attr-defined, no-any-return]


def stop_server(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM (the server closes its sessions), then SIGKILL the whole process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

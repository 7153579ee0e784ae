"""Host-side handle of one running interpreter: start it, send it cells, kill it.

Who calls it: the warm pool (`pool.py`) starts interpreters, the session manager (`sessions.py`) runs
cells on them. It speaks the worker's frame protocol (see `worker.py`) over the process's stdin/stdout
and treats anything unexpected -- a timeout, EOF, a malformed frame -- by killing the interpreter and
raising, so the caller replaces it. It never retries.

What it does not guarantee: that a killed sandbox's memory is back immediately (gVisor tears down
asynchronously); ordering between concurrent `execute` calls (the session manager serialises them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import json
import logging
import os
import resource
import shutil
import signal
import time
from typing import Any

from codeground.pipeline.errors import InfrastructureError

from .runsc import LaunchSpec

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0  # booting a sandbox on a loaded 2-core node can take seconds
MAX_REPLY_BYTES = 16 << 20  # a reply larger than this is a protocol violation
_PR_SET_PDEATHSIG = 1


class InterpreterStartError(InfrastructureError):
    """The interpreter (or its sandbox) did not come up; the message has its last stderr lines."""


class InterpreterTimeout(Exception):
    """The cell ran past its timeout; the interpreter has been killed."""


class InterpreterDied(Exception):
    """The interpreter exited or broke the protocol during a cell; it has been killed."""

    def __init__(self, message: str, returncode: int | None):
        super().__init__(message)
        self.returncode = returncode


def _child_setup(rlimits: dict[int, int] | None, user: int | None) -> None:
    """Runs in the child between fork and exec: rlimits, drop to `user`, then die with the service.

    (uvloop's subprocess has no user=/group= arguments, hence by hand; PDEATHSIG last because
    changing credentials clears it.)
    """
    for kind, value in (rlimits or {}).items():
        resource.setrlimit(kind, (value, value))
    if user is not None:
        os.setgroups([])
        os.setgid(user)
        os.setuid(user)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Interpreter:
    """One persistent Python interpreter, in its own sandbox unless isolation is off."""

    def __init__(self, proc: asyncio.subprocess.Process, spec: LaunchSpec):
        self.proc = proc
        self.spec = spec
        self.name = spec.name
        self.started_at = time.monotonic()
        self.boot_seconds = 0.0
        self._stderr_tail = b""
        self._stderr_task: asyncio.Task[None] | None = None
        self._dead = False

    @classmethod
    async def start(cls, spec: LaunchSpec) -> Interpreter:
        t0 = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=spec.env, cwd=spec.cwd,
                preexec_fn=lambda: _child_setup(spec.rlimits, spec.user), start_new_session=True)
        except Exception as e:
            _cleanup(spec)
            raise InterpreterStartError(f"cannot start interpreter {spec.name}: {type(e).__name__}: {e}") from None
        self = cls(proc, spec)
        self._stderr_task = asyncio.ensure_future(self._drain_stderr())
        try:
            hello = await asyncio.wait_for(self._recv(), START_TIMEOUT_S)
            if not hello.get("ready"):
                raise InterpreterDied(f"unexpected hello {hello!r}", None)
        except (asyncio.TimeoutError, InterpreterDied, OSError, asyncio.IncompleteReadError) as e:
            await self.kill()
            tail = self._stderr_tail.decode("utf-8", "replace").strip()[-2000:]
            raise InterpreterStartError(
                f"interpreter {spec.name} did not start ({type(e).__name__}: {e}); "
                f"exit code {proc.returncode}; stderr: {tail or '<empty>'}") from None
        self.boot_seconds = time.monotonic() - t0
        return self

    @property
    def alive(self) -> bool:
        return not self._dead and self.proc.returncode is None

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(Exception):
            while chunk := await self.proc.stderr.read(4096):
                self._stderr_tail = (self._stderr_tail + chunk)[-4096:]

    async def _recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            header = await self.proc.stdout.readexactly(4)
            n = int.from_bytes(header, "big")
            if n > MAX_REPLY_BYTES:
                raise InterpreterDied(f"reply frame of {n} bytes exceeds the protocol limit", self.proc.returncode)
            reply = json.loads(await self.proc.stdout.readexactly(n))
        except asyncio.IncompleteReadError:
            raise InterpreterDied("the interpreter exited", self.proc.returncode) from None
        except (ValueError, UnicodeDecodeError) as e:
            raise InterpreterDied(f"malformed reply frame ({e})", self.proc.returncode) from None
        if not isinstance(reply, dict):
            raise InterpreterDied("malformed reply frame (not an object)", self.proc.returncode)
        return reply

    async def execute(self, code: str, timeout: float, max_output: int) -> dict[str, Any]:
        """Run one cell. Raises InterpreterTimeout / InterpreterDied after killing the interpreter."""
        if not self.alive:
            raise InterpreterDied("the interpreter is not running", self.proc.returncode)
        assert self.proc.stdin is not None
        data = json.dumps({"op": "exec", "code": code, "max_output": max_output}).encode()
        try:
            self.proc.stdin.write(len(data).to_bytes(4, "big") + data)
            reply = await asyncio.wait_for(self._recv(), timeout)
        except asyncio.TimeoutError:
            await self.kill()
            raise InterpreterTimeout() from None
        except (InterpreterDied, ConnectionError, OSError) as e:
            await self.kill()
            # Give the exit status a moment to arrive so the reply can say what killed the process.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 1.0)
            raise InterpreterDied(str(e), self.proc.returncode) from None
        return reply

    async def kill(self) -> None:
        """SIGKILL the interpreter (runsc run: its attached sandbox dies with it) and clean up."""
        self._dead = True
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        await self._reap()

    async def close(self) -> None:
        """Ask the worker to exit (EOF on its channel); kill it if it does not within a second."""
        self._dead = True
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 1.0)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
        await self._reap()

    async def _reap(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(self.proc.wait(), 10.0)
        if self._stderr_task is not None:
            self._stderr_task.cancel()
        await asyncio.get_running_loop().run_in_executor(None, _cleanup, self.spec)


def _cleanup(spec: LaunchSpec) -> None:
    """Run once after an interpreter is gone: release its uid, delete its scratch and state files."""
    on_exit, spec.on_exit = spec.on_exit, None
    if on_exit is not None:
        on_exit()
    cleanup, spec.cleanup = spec.cleanup, []
    for pattern in cleanup:
        for path in glob.glob(pattern):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)

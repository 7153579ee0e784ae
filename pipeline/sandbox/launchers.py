"""Launchers that start interpreters as plain processes, and `make_launcher` choosing by isolation mode.

Who calls it: the service builds one launcher at start-up with :func:`make_launcher`:

* ``gvisor`` (default, local): every session in its own runsc sandbox (`runsc.py`).
* ``pod`` (Kubernetes): the pod itself runs under gVisor (``runtimeClassName: gvisor``), where runsc
  cannot nest. Sessions are processes in the pod, each under its own unprivileged uid with its own 0700
  scratch dir, clean environment and rlimits, so sessions cannot read each other's files or signal each
  other's processes. Needs the service to start as root inside the (gVisor) pod to switch uids.
* ``none`` (``--unsafe-no-isolation``): DEBUGGING ONLY, the service's own uid, rlimits, clean env.

What it does not guarantee: in ``pod`` mode, a per-session disk cap (only the per-file cap; bound the
pod's scratch emptyDir with ``sizeLimit``) or a separate network namespace per session (the pod's
NetworkPolicy must deny egress); in ``none`` mode, any isolation at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import subprocess
import tempfile

from .config import SandboxConfig
from .runsc import (
    LaunchSpec,
    RunscLauncher,
    SandboxUnavailableError,
    _ids,
    python_of,
    sandbox_env,
    worker_argv,
)

log = logging.getLogger(__name__)

POD_UID_BASE = 20000  # session uids are POD_UID_BASE + slot; nothing else in the image uses them


def not_world_traversable(path: str) -> str | None:
    """The first folder on `path` that other users cannot enter (None if every level is open)."""
    parts = path.split("/")
    for i in range(2, len(parts)):
        folder = "/".join(parts[:i])
        if not os.stat(folder).st_mode & 0o001:
            return folder
    return None


def _rlimits(config: SandboxConfig, nproc: bool) -> dict[int, int]:
    limits = {resource.RLIMIT_AS: config.memory_bytes, resource.RLIMIT_FSIZE: config.max_file_bytes,
              resource.RLIMIT_CORE: 0, resource.RLIMIT_NOFILE: 1024}
    if nproc:  # RLIMIT_NPROC counts every process of the uid: only meaningful for a uid of its own
        limits[resource.RLIMIT_NPROC] = config.max_processes
    return limits


class UnisolatedLauncher:
    """DEBUGGING ONLY: runs the interpreter as a plain child process with rlimits and a clean env."""

    isolation = "none"

    def __init__(self, config: SandboxConfig, workdir: str):
        self.config = config
        self.workdir = workdir
        log.warning("=" * 78)
        log.warning("SANDBOX ISOLATION IS OFF (--unsafe-no-isolation): code runs on this host as uid %s",
                    os.getuid())
        log.warning("=" * 78)

    def spec(self) -> LaunchSpec:
        name = f"cg-unsafe-{os.getpid()}-{next(_ids)}"
        scratch = tempfile.mkdtemp(prefix=name + "-", dir=self.workdir)
        env = sandbox_env() | {"HOME": scratch, "TMPDIR": scratch}
        return LaunchSpec(argv=worker_argv(python_of(self.config), self.config, scratch), env=env, cwd=scratch,
                          name=name, cleanup=[scratch], rlimits=_rlimits(self.config, nproc=os.getuid() != 0))


class PodLauncher:
    """Kubernetes: sessions as processes under per-session uids inside a gVisor pod."""

    isolation = "pod"

    def __init__(self, config: SandboxConfig, workdir: str):
        if os.getuid() != 0:
            raise SandboxUnavailableError(
                "isolation 'pod' gives every session its own uid, so the service must start as root inside "
                "the gVisor pod (securityContext runAsUser: 0 with SETUID, SETGID, CHOWN, KILL, FOWNER); "
                f"it runs as uid {os.getuid()}")
        blocked = not_world_traversable(os.path.realpath(python_of(config)))
        if blocked:
            raise SandboxUnavailableError(
                f"isolation 'pod': sessions run under unprivileged uids, but {blocked} is not readable and "
                f"searchable by others, so they cannot start {python_of(config)}; install Python outside it")
        self.config = config
        self.workdir = workdir
        os.chmod(workdir, 0o711)  # sessions may enter their own dir, never list the others
        slots = config.max_sessions + 2 * config.warm_pool + 8  # room for replacements being torn down
        self._free = list(range(slots))

    def _release(self, uid: int, slot: int) -> None:
        # Kill every process left under the session's uid (kill -1 as that uid), then reuse the uid.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["kill", "-9", "-1"], user=uid, group=uid, extra_groups=[], timeout=10,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._free.append(slot)

    def spec(self) -> LaunchSpec:
        if not self._free:
            raise SandboxUnavailableError("no free session uid (max_sessions + warm_pool interpreters running)")
        slot = self._free.pop(0)
        uid = POD_UID_BASE + slot
        name = f"cg-pod-{os.getpid()}-{next(_ids)}"
        scratch = tempfile.mkdtemp(prefix=name + "-", dir=self.workdir)
        os.chown(scratch, uid, uid)
        env = sandbox_env() | {"HOME": scratch, "TMPDIR": scratch}
        return LaunchSpec(argv=worker_argv(python_of(self.config), self.config, scratch, own_uid=True), env=env,
                          cwd=scratch, name=name, cleanup=[scratch], rlimits=_rlimits(self.config, nproc=True),
                          user=uid, on_exit=lambda: self._release(uid, slot))


def make_launcher(config: SandboxConfig, workdir: str) -> RunscLauncher | PodLauncher | UnisolatedLauncher:
    """The launcher for `config.isolation`; raises SandboxUnavailableError saying how to fix it."""
    if config.isolation == "none":
        return UnisolatedLauncher(config, workdir)
    if config.isolation == "pod":
        return PodLauncher(config, workdir)
    return RunscLauncher(config, workdir)


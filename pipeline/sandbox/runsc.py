"""How one interpreter is launched: the gVisor OCI bundle, or (debugging only) a bare child process.

Who calls it: `interpreter.py` asks a launcher for the argv/env/cwd of a new interpreter; the service
builds the launcher once at start-up (`make_launcher`). `build_oci_spec` is a pure function (no I/O) so
its output is unit-tested without gVisor.

The gVisor bundle: an empty read-only root (only mount points and `bin -> usr/bin` links), read-only
binds of /usr, /lib, /lib64, the real Python install and the venv (both at their host paths, so the
interpreter's rpath and `sys.prefix` keep working; a folder that lies under /tmp, such as a venv of a
checkout in /tmp, is bound under /.host instead, so the session's scratch starts empty), a size-limited
tmpfs on /tmp as the session's scratch
dir, an explicit environment, uid/gid 65534 and rlimits for memory, processes, file size. `runsc run`
is rootless with `--network=none`: the sandbox has loopback only. Everything the session wrote lives in
the sandbox's memory and disappears with it.

What it does not guarantee: a memory cap for a whole session (RLIMIT_AS is per process, so a session's
worst case is max_processes x memory); CPU shares between sessions; protection from gVisor bugs. The
process launchers (no runsc) live in `launchers.py`.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codeground.pipeline.errors import InfrastructureError

from .config import SandboxConfig

log = logging.getLogger(__name__)

SANDBOX_UID = 65534  # "nobody": rlimits only hold for an unprivileged user
SCRATCH = "/tmp"
OUTDIR = "/.output"  # a separate small tmpfs for spooled descriptor-level output (see worker.py)
WORKER_SOURCE = (Path(__file__).with_name("worker.py")).read_text()
INSTALL_HINT = (
    "gVisor's runsc was not found. Install it with `sudo apt-get install -y runsc` (Debian/Ubuntu; "
    "`hack/install-runsc.sh` does this) or see https://gvisor.dev/docs/user_guide/install/. "
    "For debugging only, `codeground sandbox serve --unsafe-no-isolation` runs code without isolation."
)
_ids = itertools.count()


class SandboxUnavailableError(InfrastructureError):
    """The isolation the config asks for cannot be provided on this host (e.g. runsc missing)."""


def sandbox_env() -> dict[str, str]:
    """The whole environment a session sees: nothing is inherited from the service."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": SCRATCH,
        "TMPDIR": SCRATCH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "MPLBACKEND": "Agg",
        # One BLAS thread: a session gets a small address space, and threads count against max_processes.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def worker_argv(python: str, config: SandboxConfig, scratch: str, outdir: str | None = None,
                own_uid: bool = False) -> list[str]:
    """The interpreter command: isolated mode (-I: no env vars, no user site), no bytecode writes.

    `own_uid`: the session runs under a uid no one else uses, so `kill(-1)` reaches exactly its processes.
    """
    import json

    settings = {"scratch": scratch, "outdir": outdir, "own_uid": own_uid, "preload": list(config.preload), "echo_last_expression": config.echo_last_expression,
                "traceback_frames": config.traceback_frames}
    return [python, "-I", "-B", "-c", WORKER_SOURCE, json.dumps(settings)]


def output_spool_bytes(config: SandboxConfig) -> int:
    """Room for spooled stdout+stderr: more than the cap, so the cap (not ENOSPC) decides truncation."""
    return 4 * config.max_output_bytes + (1 << 20)


HOST_PREFIX = "/.host"


def sandbox_path(path: str) -> str:
    """Where host folder ``path`` is bound inside the sandbox: at its own path, unless that lies in the
    session's scratch or output tmpfs, which must start empty — then under ``/.host``."""
    for inner in (SCRATCH, OUTDIR):
        if path == inner or path.startswith(inner.rstrip("/") + "/"):
            return HOST_PREFIX + path
    return path


def python_of(config: SandboxConfig) -> str:
    return config.python_executable or sys.executable


def python_binds(python: str | None = None) -> list[str]:
    """Host folders the sandboxed interpreter needs besides /usr and /lib*: its install and the venv."""
    python = python or sys.executable
    # The real interpreter's install prefix (bin/ and lib/ with the standard library) and the venv.
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(python))), os.path.dirname(os.path.dirname(python))]
    if python == sys.executable:  # the service's own interpreter: its venv and site-packages too
        candidates += [os.path.realpath(sys.base_prefix), sys.prefix, sysconfig.get_paths()["purelib"],
                       sysconfig.get_paths()["platlib"]]
    binds: list[str] = []
    for path in sorted({os.path.abspath(p) for p in candidates}, key=len):
        if not os.path.isdir(path) or path == "/":
            continue
        if any(path == b or path.startswith(b.rstrip("/") + "/") for b in [*binds, "/usr", "/lib", "/lib64"]):
            continue  # already visible through a parent bind
        binds.append(path)
    return binds


def build_oci_spec(config: SandboxConfig, *, args: list[str], binds: list[str], rootfs: str = "rootfs") -> dict[str, Any]:
    """The OCI runtime spec (config.json) of one session's sandbox. Pure: no I/O."""
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": SCRATCH, "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", f"size={config.scratch_bytes}"]},
        {"destination": OUTDIR, "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", f"size={output_spool_bytes(config)}"]},
    ]
    for path in ["/usr", "/lib", "/lib64", *binds]:
        mounts.append({"destination": sandbox_path(path), "type": "bind", "source": path,
                       "options": ["rbind", "ro", "nosuid", "nodev"]})

    def rlimit(kind: str, value: int) -> dict[str, Any]:
        return {"type": kind, "hard": int(value), "soft": int(value)}

    env = sandbox_env()
    return {
        "ociVersion": "1.0.0",
        "process": {
            "terminal": False,
            "user": {"uid": SANDBOX_UID, "gid": SANDBOX_UID},
            "args": args,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": SCRATCH,
            "noNewPrivileges": True,
            "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
            "rlimits": [
                rlimit("RLIMIT_AS", config.memory_bytes),
                rlimit("RLIMIT_NPROC", config.max_processes),
                rlimit("RLIMIT_FSIZE", config.max_file_bytes),
                rlimit("RLIMIT_NOFILE", 1024),
                rlimit("RLIMIT_CORE", 0),
            ],
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]},
    }


@dataclass
class LaunchSpec:
    """What `interpreter.py` needs to start one interpreter process."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    name: str
    cleanup: list[str] = field(default_factory=list)  # paths (files/dirs, globs allowed) removed after exit
    rlimits: dict[int, int] | None = None  # set in the child before exec (process launchers only)
    user: int | None = None  # run the child as this uid/gid (pod launcher)
    on_exit: Callable[[], None] | None = None  # called once after the process is gone


class RunscLauncher:
    """Starts each interpreter in its own gVisor sandbox from one shared, read-only bundle."""

    isolation = "gvisor"

    def __init__(self, config: SandboxConfig, workdir: str):
        self.config = config
        runsc = shutil.which(config.runsc_path)
        if runsc is None:
            raise SandboxUnavailableError(INSTALL_HINT)
        self.runsc = runsc
        self.workdir = workdir
        self.state = os.path.join(workdir, "runsc-state")
        self.bundle = os.path.join(workdir, "bundle")
        binds = python_binds(python_of(config))
        python = sandbox_path(python_of(config))
        spec = build_oci_spec(config, args=worker_argv(python, config, SCRATCH, OUTDIR), binds=binds)
        ensure_bundle(self.bundle, spec)
        os.makedirs(self.state, mode=0o700, exist_ok=True)
        log.info("gVisor bundle at %s (binds: %s)", self.bundle, ", ".join(binds))

    def spec(self) -> LaunchSpec:
        name = f"cg-{os.getpid()}-{next(_ids)}"
        argv = [self.runsc, "--root", self.state, "--rootless", "--network=none",
                f"--platform={self.config.runsc_platform}", "--ignore-cgroups",
                "run", "--bundle", self.bundle, name]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return LaunchSpec(argv=argv, env=env, cwd=self.workdir, name=name,
                          cleanup=[os.path.join(self.state, f"{name}_sandbox:*"), os.path.join(self.state, name)])


def ensure_bundle(bundle: str, spec: dict[str, Any]) -> None:
    """Write config.json and an empty root with the mount points and /bin links (idempotent)."""
    import json

    rootfs = os.path.join(bundle, spec["root"]["path"])
    os.makedirs(rootfs, exist_ok=True)
    for m in spec["mounts"]:
        os.makedirs(os.path.join(rootfs, m["destination"].lstrip("/")), exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin")):
        path = os.path.join(rootfs, link)
        if not os.path.lexists(path):
            os.symlink(target, path)
    for d in ("dev", "etc", "proc", "sys"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    # gVisor checks mount points as the sandbox user: keep every level traversable.
    for dirpath, dirnames, _ in os.walk(rootfs):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
    os.chmod(rootfs, 0o755)
    os.chmod(bundle, 0o755)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f, indent=1)

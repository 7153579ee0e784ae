"""Fast unit tests of the sandbox's pure parts: config, OCI spec, reply shaping, worker (no gVisor)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from codeground.pipeline.sandbox.client import ExecResult
from codeground.pipeline.sandbox.config import SandboxConfig, SandboxConfigError, parse_quantity
from codeground.pipeline.sandbox.runsc import (
    SANDBOX_UID,
    build_oci_spec,
    python_binds,
    sandbox_path,
    worker_argv,
)
from codeground.pipeline.sandbox.sessions import shape_reply


def test_quantities() -> None:
    assert parse_quantity("1Gi") == 1 << 30
    assert parse_quantity("512Mi") == 512 << 20
    assert parse_quantity("2G") == 2 * 10**9
    assert parse_quantity(1234) == 1234
    with pytest.raises(SandboxConfigError, match=r"limits\.memory"):
        parse_quantity("lots", "limits.memory")


def test_from_limits_reads_the_crd_names() -> None:
    c = SandboxConfig.from_limits({"timeoutSeconds": 5, "memory": "512Mi", "maxProcesses": 16,
                                   "maxOutputBytes": 1000, "maxSessions": 8, "sessionIdleSeconds": 60})
    assert (c.timeout_seconds, c.memory_bytes, c.max_processes, c.max_output_bytes, c.max_sessions,
            c.session_idle_seconds) == (5.0, 512 << 20, 16, 1000, 8, 60.0)
    assert c.warm_pool == 4 and c.isolation == "gvisor"
    assert SandboxConfig.from_limits({"maxSessions": 2}).warm_pool == 2  # the pool never exceeds the cap


@pytest.mark.parametrize(("limits", "message"), [
    ({"timeoutSeconds": 0}, "timeout_seconds"),
    ({"memory": "1Mi"}, "memory_bytes"),
    ({"maxSesions": 3}, "limits.maxSesions: unknown limit"),
])
def test_bad_limits_name_the_field(limits: dict[str, object], message: str) -> None:
    with pytest.raises(SandboxConfigError, match=message):
        SandboxConfig.from_limits(limits)


def test_oci_spec_is_locked_down() -> None:
    config = SandboxConfig(scratch_bytes=32 << 20)
    spec = build_oci_spec(config, args=["python"], binds=["/opt/py"])
    proc = spec["process"]
    assert proc["user"] == {"uid": SANDBOX_UID, "gid": SANDBOX_UID}
    assert spec["root"]["readonly"] is True
    assert all(not e.startswith(("CODEGROUND", "AWS", "HF_")) for e in proc["env"])
    assert {r["type"] for r in proc["rlimits"]} >= {"RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_FSIZE"}
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/tmp"]["type"] == "tmpfs" and f"size={32 << 20}" in mounts["/tmp"]["options"]
    for path in ("/usr", "/lib", "/opt/py"):
        assert "ro" in mounts[path]["options"]
    assert {"type": "network"} in spec["linux"]["namespaces"]


def test_host_folders_under_the_scratch_are_bound_elsewhere() -> None:
    spec = build_oci_spec(SandboxConfig(), args=["python"], binds=["/tmp/ci/clone/.venv", "/opt/py"])
    binds = {m["source"]: m["destination"] for m in spec["mounts"] if m["type"] == "bind"}
    assert binds["/tmp/ci/clone/.venv"] == "/.host/tmp/ci/clone/.venv" and binds["/opt/py"] == "/opt/py"
    assert sandbox_path("/tmp/ci/clone/.venv/bin/python") == "/.host/tmp/ci/clone/.venv/bin/python"
    assert sandbox_path("/tmpfoo/bin/python") == "/tmpfoo/bin/python"


def test_python_binds_cover_the_interpreter() -> None:
    binds = python_binds()
    real = os.path.realpath(sys.executable)
    assert any(real.startswith(b + "/") for b in [*binds, "/usr"])


def test_reply_shaping_cuts_bytes_and_marks() -> None:
    raw = {"status": "ok", "stdout": "é" * 100, "stderr": "", "dropped_bytes": 0}
    r = shape_reply(raw, 51, 0.1)
    assert r["status"] == "output_truncated" and r["truncated"]
    assert r["stdout"].startswith("é" * 25) and "[output truncated" in r["stdout"]
    assert shape_reply({"status": "ok", "stdout": "hi\n"}, 100, 0.1)["status"] == "ok"
    assert shape_reply({"status": "error", "stdout": "x", "dropped_bytes": 5}, 100, 0.1)["status"] == "error"


def test_output_is_what_the_model_sees() -> None:
    r = ExecResult("error", "partial", "warn\n", "ZeroDivisionError", "division by zero",
                   "Traceback ...\nZeroDivisionError: division by zero\n", 0.01)
    assert r.output == "partial\nwarn\nTraceback ...\nZeroDivisionError: division by zero\n"
    t = ExecResult("timeout", "", "", "TimeoutError", "ran too long", None, 3.0, restarted=True)
    assert t.output == "TimeoutError: ran too long\n"


def test_worker_protocol_without_isolation(tmp_path: object) -> None:
    """The worker loop itself, as a plain process: persistence, echo, errors, thread attribution."""
    argv = worker_argv(sys.executable, SandboxConfig(), str(tmp_path))
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(tmp_path),
                         env={"PATH": "/usr/bin:/bin"})
    assert p.stdin is not None and p.stdout is not None

    def recv() -> dict[str, object]:
        n = int.from_bytes(p.stdout.read(4), "big")  # type: ignore[union-attr]
        return json.loads(p.stdout.read(n))  # type: ignore[union-attr, no-any-return]

    def call(code: str) -> dict[str, object]:
        data = json.dumps({"op": "exec", "code": code, "max_output": 100}).encode()
        p.stdin.write(len(data).to_bytes(4, "big") + data)  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
        return recv()

    try:
        assert recv()["ready"] is True
        assert call("x = 2")["status"] == "ok"
        assert call("x * 21")["stdout"] == "42\n"
        r = call("import json, builtins\njson.dumps = None\nbuiltins.len = None\n1/0")
        assert r["error_type"] == "ZeroDivisionError" and "<cell-3>" in str(r["traceback"])
        assert call("print(len('abc'))")["stdout"] == "3\n"
        r = call("print('y' * 500)")
        assert r["dropped_bytes"] == 401 and len(str(r["stdout"])) == 100
    finally:
        p.kill()
        p.wait()


def test_boots_on_demand_wait_for_a_boot_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """48 sessions asked for at once from an empty pool: never more than `concurrency` sandboxes boot
    at the same time (together they starved the cells already running), and every caller gets one."""
    import asyncio

    from codeground.pipeline.sandbox import pool as pool_mod

    running, peak = 0, 0

    class FakeInterp:
        alive = True

        async def kill(self) -> None:
            pass

    async def fake_start(spec: object) -> FakeInterp:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return FakeInterp()

    monkeypatch.setattr(pool_mod.Interpreter, "start", staticmethod(fake_start))

    async def main() -> list[tuple[object, bool]]:
        pool = pool_mod.WarmPool(lambda: object(), size=0, concurrency=2)
        return await asyncio.gather(*(pool.acquire() for _ in range(48)))

    got = asyncio.run(main())
    assert len(got) == 48 and len({id(i) for i, _ in got}) == 48
    assert peak == 2

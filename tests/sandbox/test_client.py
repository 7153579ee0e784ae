"""The client against real servers: sticky sessions over two replicas, infra errors vs code errors,
and nothing left behind when a server dies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from codeground.pipeline.sandbox.client import AsyncSandboxClient, SandboxClient, SandboxInfraError
from codeground.pipeline.sandbox.config import SandboxConfig
from codeground.pipeline.sandbox.local import free_port, local_sandbox, serve_argv, stop_server

from .conftest import TEST_CONFIG, require_runsc

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def two_replicas() -> Iterator[list[str]]:
    require_runsc()
    config = SandboxConfig(**{**TEST_CONFIG, "warm_pool": 2})
    with local_sandbox(config) as a, local_sandbox(config) as b:
        yield [a, b]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_sessions_spread_over_replicas_and_stay_sticky(two_replicas: list[str]) -> None:
    async def scenario() -> None:
        async with AsyncSandboxClient(two_replicas) as client:
            ids = [await client.create_session() for _ in range(4)]
            owners = [client.endpoint_of(i) for i in ids]
            assert sorted(owners) == sorted(two_replicas * 2)  # least-loaded: two on each
            await asyncio.gather(*(client.execute(i, f"mine = {n}") for n, i in enumerate(ids)))
            results = await asyncio.gather(*(client.execute(i, "print(mine)") for i in ids))
            assert [r.stdout for r in results] == [f"{n}\n" for n in range(4)]
            for sid, url in zip(ids, owners, strict=True):  # the state really lives on the pod the client remembered
                listed = httpx.get(f"{url}/v1/sessions").json()["sessions"]
                assert sid in [s["id"] for s in listed]
            await asyncio.gather(*(client.close_session(i) for i in ids))

    asyncio.run(scenario())


def test_headless_service_name_resolves_to_pods(two_replicas: list[str]) -> None:
    port = two_replicas[0].rsplit(":", 1)[1]
    with SandboxClient(f"dns+http://localhost:{port}") as client:
        sid = client.create_session()
        assert client.execute(sid, "print(6 * 7)").stdout == "42\n"
        assert client.endpoint_of(sid).endswith(f":{port}")
        client.close_session(sid)


def test_code_errors_are_results_and_a_dead_server_is_an_infra_error() -> None:
    require_runsc()
    config = SandboxConfig(**{**TEST_CONFIG, "warm_pool": 1})
    port = free_port()
    proc = subprocess.Popen(serve_argv(config, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with SandboxClient(url, retries=1) as client:
            sid = client.create_session()
            for code in ("1/0", "while True: pass", "import os\nos._exit(1)"):
                r = client.execute(sid, code, timeout=1)  # the code's failures are results, not exceptions
                assert r.status in ("error", "timeout", "killed")
            sandboxes = _descendants(proc.pid)
            assert sandboxes, "the server should have sandbox processes"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            with pytest.raises(SandboxInfraError):
                client.execute(sid, "print(1)")
            with pytest.raises(SandboxInfraError):
                client.create_session()
        deadline = time.monotonic() + 15  # the sandboxes die with the server (PDEATHSIG + attached boot)
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in sandboxes):
            time.sleep(0.2)
        assert not [p for p in sandboxes if os.path.exists(f"/proc/{p}")]
    finally:
        stop_server(proc)


def test_graceful_stop_leaves_no_sandbox_processes_or_files() -> None:
    require_runsc()
    config = SandboxConfig(**{**TEST_CONFIG, "warm_pool": 2})
    port = free_port()
    proc = subprocess.Popen(serve_argv(config, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with SandboxClient(url) as client:
            sid = client.create_session()
            client.execute(sid, "open('/tmp/data', 'w').write('x' * 1000)")
            workdirs = {os.readlink(f"/proc/{p}/cwd") for p in _descendants(proc.pid)
                        if os.path.exists(f"/proc/{p}/cwd")}
            sandboxes = _descendants(proc.pid)
    finally:
        stop_server(proc)
    deadline = time.monotonic() + 15  # gVisor tears a sandbox down asynchronously after its runsc exits
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in sandboxes):
        time.sleep(0.2)
    assert not [p for p in sandboxes if os.path.exists(f"/proc/{p}")]
    assert workdirs and not [d for d in workdirs if d.startswith("/tmp/codeground-sandbox-") and os.path.exists(d)]

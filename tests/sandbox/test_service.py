"""Sessions and limits through the real service under gVisor: what a rollout would notice."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from codeground.pipeline.sandbox.client import SandboxClient, SandboxInfraError, SandboxSessionLost
from codeground.pipeline.sandbox.config import SandboxConfig, SandboxConfigError
from codeground.pipeline.sandbox.local import local_sandbox

from .conftest import TEST_CONFIG, require_runsc

pytestmark = pytest.mark.sandbox


def test_state_persists_between_calls(client: SandboxClient, session: str) -> None:
    assert client.execute(session, "import math\nx = 41").status == "ok"
    r = client.execute(session, "x + 1")  # the last expression is echoed, like a notebook
    assert (r.status, r.stdout) == ("ok", "42\n")
    r = client.execute(session, "def f():\n    return math.pi\nprint(round(f(), 2))")
    assert r.stdout == "3.14\n"


def test_error_reply_has_type_message_and_short_traceback(client: SandboxClient, session: str) -> None:
    r = client.execute(session, "def g(d):\n    return d['missing']\nprint('before')\ng({})")
    assert r.status == "error" and r.error_type == "KeyError" and r.error_message == "'missing'"
    assert r.stdout == "before\n"
    assert "<cell-" in r.traceback and "worker" not in r.traceback  # no service frames shown to the model
    assert r.output.startswith("before\n") and r.output.rstrip().endswith("KeyError: 'missing'")
    assert client.execute(session, "print('fine')").stdout == "fine\n"


def test_scientific_packages_import() -> None:
    require_runsc()  # own server: these imports take seconds under gVisor on a busy machine
    config = SandboxConfig(**{**TEST_CONFIG, "timeout_seconds": 60.0, "warm_pool": 1})
    with local_sandbox(config) as url, SandboxClient(url) as client:
        sid = client.create_session()
        r = client.execute(sid, "import numpy as np, sympy, scipy.linalg\n"
                                "print(int(np.arange(10).sum()), sympy.factor('x**2-1'), "
                                "round(float(scipy.linalg.det(np.eye(3))), 1))")
        assert (r.status, r.stdout) == ("ok", "45 (x - 1)*(x + 1) 1.0\n"), r


def test_timeout_restarts_the_session_and_says_so(client: SandboxClient, session: str) -> None:
    client.execute(session, "x = 1")
    t0 = time.monotonic()
    r = client.execute(session, "while True: pass", timeout=1)
    assert r.status == "timeout" and r.restarted and 1 <= r.duration_s < 2.5
    assert time.monotonic() - t0 < 5
    r = client.execute(session, "print('x' in globals())")
    assert r.stdout == "False\n"


def test_server_timeout_caps_the_requested_one(client: SandboxClient, session: str) -> None:
    r = client.execute(session, "import time\ntime.sleep(10)", timeout=60)
    assert r.status == "timeout" and r.duration_s < TEST_CONFIG["timeout_seconds"] + 1.5


def test_queued_cells_wait_outside_their_timeout() -> None:
    """Three 0.8 s cells at once with room for one: they run one after another (>= 2.4 s in all), and
    each is timed from its own start, so none reaches the 1.5 s limit while it waits its turn."""
    require_runsc()
    import concurrent.futures

    config = SandboxConfig(**{**TEST_CONFIG, "warm_pool": 3, "max_parallel_cells": 1})
    with local_sandbox(config) as url, SandboxClient(url) as client:
        sids = [client.create_session() for _ in range(3)]
        for sid in sids:
            client.execute(sid, "import time")
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            replies = list(ex.map(lambda sid: client.execute(sid, "time.sleep(0.8)\nprint('done')", timeout=1.5), sids))
        wall = time.monotonic() - t0
    assert [r.status for r in replies] == ["ok"] * 3, replies
    assert all(0.8 <= r.duration_s < 1.5 for r in replies)
    assert wall >= 2.4


def test_parallel_cells_default_follows_the_cpus() -> None:
    import os

    assert SandboxConfig().parallel_cells() == 2 * len(os.sched_getaffinity(0))
    assert SandboxConfig(max_parallel_cells=3).parallel_cells() == 3
    assert SandboxConfig.from_limits({"maxParallelCells": 5}).max_parallel_cells == 5
    with pytest.raises(SandboxConfigError, match="max_parallel_cells"):
        SandboxConfig(max_parallel_cells=-1)


def test_preloaded_modules_make_the_first_import_instant() -> None:
    require_runsc()
    config = SandboxConfig(**{**TEST_CONFIG, "timeout_seconds": 60.0, "warm_pool": 1, "preload": ("numpy",)})
    with local_sandbox(config) as url, SandboxClient(url) as client:
        sid = client.create_session()
        r = client.execute(sid, "import sys\nprint('numpy' in sys.modules)\nimport numpy as np\nprint(np.ones(2).sum())")
        assert r.stdout == "True\n2.0\n", r


def test_oversized_cell_is_a_code_error(client: SandboxClient, session: str) -> None:
    r = client.execute(session, "x = 1\n" * 200_000)  # 1.2 MB > max_code_bytes (1 MiB)
    assert (r.status, r.error_type) == ("error", "CodeTooLarge")
    assert client.execute(session, "print('ok')").stdout == "ok\n"


def test_without_runsc_the_server_refuses_with_install_steps() -> None:
    out = subprocess.run([sys.executable, "-m", "codeground.pipeline.sandbox", "serve", "--runsc",
                          "/nonexistent/runsc", "--port", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "apt-get install -y runsc" in out.stderr and "--unsafe-no-isolation" in out.stderr


def test_unsafe_mode_runs_cells_without_gvisor() -> None:
    config = SandboxConfig(**{**TEST_CONFIG, "warm_pool": 1})
    with local_sandbox(config, unsafe_no_isolation=True) as url, SandboxClient(url) as client:
        assert httpx.get(f"{url}/readyz").json()["isolation"] == "none"
        sid = client.create_session()
        assert client.execute(sid, "y = 5\ny * 2").stdout == "10\n"
        assert client.execute(sid, "while True: pass", timeout=1).status == "timeout"


def test_sessions_are_isolated(client: SandboxClient) -> None:
    a, b = client.create_session(), client.create_session()
    try:
        client.execute(a, "secret = 'from-a'\nopen('/tmp/a.txt', 'w').write('file-from-a')")
        r = client.execute(b, "import os\nprint('secret' in globals(), os.listdir('/tmp'))")
        assert r.stdout == "False []\n", r
    finally:
        client.close_session(a)
        client.close_session(b)


def test_a_venv_under_tmp_leaves_the_scratch_empty(tmp_path) -> None:
    """A checkout in /tmp (CI clones often are) has its venv there: the session's /tmp still starts empty."""
    require_runsc()
    assert str(tmp_path).startswith("/tmp/")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    config = SandboxConfig(**{**TEST_CONFIG, "warm_pool": 0, "python_executable": str(venv / "bin" / "python")})
    with local_sandbox(config) as url, SandboxClient(url) as client:
        sid = client.create_session()
        r = client.execute(sid, "import os, sys\nprint(os.listdir('/tmp'), sys.prefix, 6 * 7)")
        assert r.stdout == f"[] /.host{venv} 42\n", r


def test_reset_gives_a_fresh_interpreter_and_scratch(client: SandboxClient, session: str) -> None:
    client.execute(session, "y = 2\nopen('/tmp/keep.txt', 'w').write('x')")
    client.reset(session)
    r = client.execute(session, "import os\nprint('y' in globals(), os.listdir('/tmp'))")
    assert r.stdout == "False []\n"


def test_closed_session_is_gone(client: SandboxClient, sandbox_url: str) -> None:
    sid = client.create_session()
    assert sid in [s["id"] for s in httpx.get(f"{sandbox_url}/v1/sessions").json()["sessions"]]
    client.close_session(sid)
    assert sid not in [s["id"] for s in httpx.get(f"{sandbox_url}/v1/sessions").json()["sessions"]]
    r = httpx.post(f"{sandbox_url}/v1/sessions/{sid}/execute", json={"code": "1"})
    assert r.status_code == 404
    with pytest.raises(SandboxSessionLost):
        client.execute(sid, "1")


def test_metrics_and_openapi(sandbox_url: str, client: SandboxClient, session: str) -> None:
    client.execute(session, "1")
    text = httpx.get(f"{sandbox_url}/metrics").text
    assert 'codeground_sandbox_executions_total{status="ok"}' in text
    assert "codeground_sandbox_pool_ready" in text
    paths = httpx.get(f"{sandbox_url}/openapi.json").json()["paths"]
    assert {"/v1/sessions", "/v1/sessions/{session_id}/execute", "/v1/sessions/{session_id}/reset",
            "/v1/sessions/{session_id}", "/healthz", "/readyz", "/metrics"} <= set(paths)


def test_full_server_answers_429_with_retry_after_and_idle_sessions_are_reaped() -> None:
    require_runsc()
    config = SandboxConfig(**{**TEST_CONFIG, "max_sessions": 2, "warm_pool": 1, "session_idle_seconds": 2.0})
    with local_sandbox(config) as url:
        ids = [httpx.post(f"{url}/v1/sessions", timeout=60).json()["id"] for _ in range(2)]
        r = httpx.post(f"{url}/v1/sessions", timeout=60)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        with SandboxClient(url, retries=0) as client, pytest.raises(SandboxInfraError, match="429"):
            client.create_session()
        httpx.post(f"{url}/v1/sessions/{ids[0]}/execute", json={"code": "open('/tmp/f', 'w').write('x')"})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and httpx.get(f"{url}/v1/sessions").json()["sessions_open"]:
            time.sleep(0.5)
        assert httpx.get(f"{url}/v1/sessions").json()["sessions_open"] == 0
        assert httpx.post(f"{url}/v1/sessions/{ids[0]}/execute", json={"code": "1"}).status_code == 404
        r = httpx.post(f"{url}/v1/sessions", timeout=60)  # room again; the new session has a clean scratch
        assert r.status_code == 201
        sid = r.json()["id"]
        out = httpx.post(f"{url}/v1/sessions/{sid}/execute", json={"code": "import os\nprint(os.listdir('/tmp'))"})
        assert out.json()["stdout"] == "[]\n"
        assert 'codeground_sandbox_sessions_closed_total{reason="idle"} 2.0' in httpx.get(f"{url}/metrics").text

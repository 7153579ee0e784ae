"""Isolation mode `pod` (Kubernetes, where the pod itself runs under gVisor): sessions as processes with
their own uid. Runs on the host here (needs root and a Python that other uids can execute)."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from codeground.pipeline.sandbox.client import SandboxClient
from codeground.pipeline.sandbox.config import SandboxConfig
from codeground.pipeline.sandbox.launchers import not_world_traversable
from codeground.pipeline.sandbox.local import local_sandbox

from .conftest import TEST_CONFIG

pytestmark = pytest.mark.sandbox


def _python_for_others() -> str:
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        path = shutil.which(candidate)
        if path and not_world_traversable(os.path.realpath(path)) is None:
            return path
    pytest.skip("no Python that unprivileged uids can execute")


def test_pod_mode_separates_sessions_by_uid() -> None:
    if os.getuid() != 0:
        pytest.skip("pod mode switches uids: needs root (as the service has inside its gVisor pod)")
    config = SandboxConfig(**{**TEST_CONFIG, "isolation": "pod", "python_executable": _python_for_others(),
                              "deny_local_clients": False})  # our test client is local too
    with local_sandbox(config) as url, SandboxClient(url) as client:
        a, b = client.create_session(), client.create_session()
        ra = client.execute(a, "import os\nopen('mine.txt', 'w').write('a')\nprint(os.getuid(), os.getcwd())")
        uid_a, cwd_a = ra.stdout.split()
        rb = client.execute(b, f"import os\nprint(os.getuid())\nopen({cwd_a!r} + '/mine.txt').read()")
        assert rb.stdout.split()[0] != uid_a and int(uid_a) >= 20000
        assert rb.error_type == "PermissionError", rb
        r = client.execute(b, "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('still here')")
        assert client.execute(a, "print('a alive')").stdout == "a alive\n"  # b cannot signal a
        r = client.execute(a, "import os\nprint(sorted(os.environ))")
        assert "CODEGROUND_TEST_SECRET" not in r.stdout
        r = client.execute(a, "import subprocess\nsubprocess.Popen(['sleep', '60'])")
        r = client.execute(a, "import subprocess\nprint(subprocess.run(['pgrep', '-u', str(os.getuid()), 'sleep'],"
                              " capture_output=True).stdout)")
        assert r.stdout == "b''\n", r  # the cell's leftover process was killed when the cell ended
        client.close_session(a)
        assert not os.path.exists(cwd_a)  # scratch deleted on close


def test_pod_mode_refuses_api_calls_from_inside_the_pod() -> None:
    """Session code shares the pod's network: it must not be able to drive the API (other sessions)."""
    if os.getuid() != 0:
        pytest.skip("pod mode switches uids: needs root (as the service has inside its gVisor pod)")
    config = SandboxConfig(**{**TEST_CONFIG, "isolation": "pod", "python_executable": _python_for_others()})
    with local_sandbox(config) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes still answered
        r = httpx.post(f"{url}/v1/sessions")
        assert r.status_code == 403 and "inside the sandbox pod" in r.text

"""Fixtures of the sandbox tests: real `sandbox serve` processes under gVisor.

Tests marked `sandbox` need runsc (CI installs it with hack/install-runsc.sh). Without it they are
skipped with the install hint, unless CODEGROUND_REQUIRE_RUNSC=1 (CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from codeground.pipeline.sandbox.client import SandboxClient
from codeground.pipeline.sandbox.config import SandboxConfig
from codeground.pipeline.sandbox.local import local_sandbox
from codeground.pipeline.sandbox.runsc import INSTALL_HINT

# Small, fast limits: a 3 s timeout keeps the infinite-loop snippets cheap.
TEST_CONFIG = dict(timeout_seconds=3.0, memory_bytes=512 << 20, max_processes=32, max_output_bytes=8192,
                   max_file_bytes=16 << 20, scratch_bytes=32 << 20, max_sessions=16, warm_pool=2)


def require_runsc() -> None:
    if shutil.which("runsc") is None:
        if os.environ.get("CODEGROUND_REQUIRE_RUNSC") == "1":
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)


@pytest.fixture(scope="session")
def sandbox_url() -> Iterator[str]:
    """One gVisor-backed server shared by the battery and the API tests."""
    require_runsc()
    with local_sandbox(SandboxConfig(**TEST_CONFIG)) as url:
        yield url


@pytest.fixture(scope="session")
def client(sandbox_url: str) -> Iterator[SandboxClient]:
    with SandboxClient(sandbox_url, request_timeout=30) as c:
        yield c


@pytest.fixture
def session(client: SandboxClient) -> Iterator[str]:
    sid = client.create_session()
    yield sid
    client.close_session(sid)

"""Adversarial battery: code a model could emit, run in real gVisor sessions.

For every snippet: the reply says what happened (timeout, memory, killed, error, truncated), the very
next call in the same session works, and the service stays up. Limits come from conftest.TEST_CONFIG
(3 s timeout, 512 MiB per process, 32 processes, 16 MiB files, 32 MiB scratch, 8 KiB output).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from codeground.pipeline.sandbox.client import ExecResult, SandboxClient

pytestmark = pytest.mark.sandbox

SECRET = "codeground-test-secret-value"
os.environ["CODEGROUND_TEST_SECRET"] = SECRET  # the server inherits it; sessions must never see it


@dataclass
class Case:
    name: str
    code: str
    statuses: tuple[str, ...]  # acceptable reply statuses
    check: Callable[[ExecResult], bool] | None = None


def has(text: str) -> Callable[[ExecResult], bool]:
    return lambda r: text in r.output


def lacks(text: str) -> Callable[[ExecResult], bool]:
    return lambda r: text not in r.output


def err(*names: str) -> Callable[[ExecResult], bool]:
    return lambda r: r.error_type in names


CASES = [
    # --- infinite loops -------------------------------------------------------------------------
    Case("loop/busy", "while True: pass", ("timeout",)),
    Case("loop/ignores-signals",
         "import signal\nfor s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGHUP):\n"
         "    signal.signal(s, signal.SIG_IGN)\nwhile True: pass", ("timeout",)),
    Case("loop/c-level-regex", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')", ("timeout",)),
    Case("loop/sleep-forever", "import time\ntime.sleep(10**6)", ("timeout",)),
    Case("loop/busy-catching-everything",
         "while True:\n    try:\n        while True: pass\n    except BaseException:\n        pass", ("timeout",)),
    # --- fork, thread and memory bombs -----------------------------------------------------------
    Case("bomb/fork-forever", "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
         ("timeout", "killed")),
    Case("bomb/fork-until-refused",
         "import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(60); os._exit(0)",
         ("error",), err("BlockingIOError", "OSError")),
    Case("bomb/fork-child-falls-through", "import os, time\npid = os.fork()\nif pid: time.sleep(0.2)\n"
         "print('parent' if pid else 'child')", ("ok",), lambda r: r.stdout == "parent\n"),
    Case("bomb/threads",
         "import threading, time\nts = []\nwhile True:\n"
         "    t = threading.Thread(target=time.sleep, args=(30,), daemon=True); t.start(); ts.append(t)",
         ("error",), err("RuntimeError")),
    Case("bomb/one-huge-allocation", "x = bytearray(10**11)", ("error",), err("MemoryError")),
    Case("bomb/growing-list", "a = []\nwhile True: a.append(' ' * 10**7)", ("error",), err("MemoryError")),
    Case("bomb/numpy", "import numpy as np\nnp.ones((10**5, 10**5))", ("error",),
         lambda r: "MemoryError" in (r.error_type or "")),
    # --- disk ---------------------------------------------------------------------------------------
    Case("disk/one-huge-file", "with open('big', 'wb') as f:\n    while True: f.write(b'x' * (1 << 20))",
         ("error",), has("File too large")),
    Case("disk/many-files", "for i in range(1000):\n    open(f'f{i}', 'wb').write(b'x' * (8 << 20))",
         ("error",), has("No space left")),
    Case("disk/write-outside-scratch", "open('/usr/evil', 'w').write('x')", ("error",),
         err("OSError", "PermissionError", "FileNotFoundError")),
    # --- output ---------------------------------------------------------------------------------------
    Case("output/huge-print", "print('x' * 10**7)", ("output_truncated",), has("[output truncated")),
    Case("output/print-forever", "while True: print('spam')", ("timeout",)),
    Case("output/binary-bytes", "import sys\nsys.stdout.buffer.write(bytes(range(256)))\nprint()", ("ok",)),
    Case("output/lone-surrogates", "print('\\udcff\\ud800 end')", ("ok",), has("end")),
    Case("output/raw-fd-non-utf8", "import os\nos.write(1, b'\\xff\\xfe raw fd\\n')", ("ok",), has("raw fd")),
    Case("output/subprocess-flood", "import subprocess\nsubprocess.run(['head', '-c', '50000000', '/dev/zero'])",
         ("output_truncated", "ok"), has("[output truncated")),
    # --- host files and environment -----------------------------------------------------------------
    Case("host/etc-passwd", "open('/etc/passwd').read()", ("error",), err("FileNotFoundError")),
    Case("host/environ", "import os\nprint(dict(os.environ))", ("ok",), lacks(SECRET)),
    Case("host/proc-environ", "print(open('/proc/1/environ', 'rb').read())", ("ok",), lacks(SECRET)),
    Case("host/proc-processes", "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",
         ("ok",), lambda r: max(eval(r.stdout)) < 100),
    Case("host/source-tree", f"import os\nprint(os.path.exists({__file__!r}), os.listdir('/'))", ("ok",),
         has("False")),
    Case("host/uid", "import os\nprint(os.getuid(), os.geteuid())", ("ok",), has("65534 65534")),
    # --- network ----------------------------------------------------------------------------------------
    Case("net/connect", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)", ("error",),
         lambda r: r.error_type in ("OSError", "TimeoutError", "ConnectionRefusedError")),
    Case("net/dns", "import socket\nsocket.getaddrinfo('example.com', 80)", ("error",), err("gaierror")),
    Case("net/urllib", "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)",
         ("error",), err("URLError")),
    Case("net/host-loopback", "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
         ("error",), err("ConnectionRefusedError", "OSError", "TimeoutError")),
    # --- killing itself ----------------------------------------------------------------------------------
    Case("kill/own-process-group", "import os, signal\nos.killpg(0, signal.SIGKILL)", ("killed", "ok")),
    Case("kill/self-sigkill", "import os\nos.kill(os.getpid(), 9)", ("killed",)),
    Case("kill/os-exit", "import os\nos._exit(3)", ("killed",)),
    Case("kill/everyone", "import os\nos.kill(-1, 9)", ("killed", "ok", "error")),
    Case("kill/sys-exit", "import sys\nsys.exit(0)", ("error",), err("SystemExit")),
    # --- broken stdio and cwd ----------------------------------------------------------------------------------
    Case("stdio/close-stdout", "import sys\nsys.stdout.close()", ("ok", "error")),
    Case("stdio/replace-stdout", "import sys\nsys.stdout = None\nsys.stderr = None", ("ok",)),
    Case("stdio/close-fds", "import os\nos.close(0); os.close(1); os.close(2)", ("ok",)),
    Case("stdio/delete-cwd", "import os\nos.mkdir('/tmp/d'); os.chdir('/tmp/d'); os.rmdir('/tmp/d')", ("ok",)),
    Case("stdio/patch-builtins-json",
         "import builtins, json, sys\nbuiltins.len = None\nbuiltins.print = None\njson.dumps = None\nsys.modules['json'] = None",
         ("ok",)),
    # --- recursion --------------------------------------------------------------------------------------------
    Case("recursion/plain", "def f(n): return f(n + 1)\nf(0)", ("error",), err("RecursionError")),
    Case("recursion/raised-limit", "import sys\nsys.setrecursionlimit(10**7)\ndef f(n): return f(n + 1)\nf(0)",
         ("killed", "error", "timeout")),
    Case("recursion/nested-parens", "eval('(' * 100000 + ')' * 100000)", ("error",)),
    # --- stdin ----------------------------------------------------------------------------------------------
    Case("stdin/input", "input('your answer: ')", ("error",), err("EOFError")),
    Case("stdin/read", "import sys\nprint(repr(sys.stdin.read()))", ("ok",), has("''")),
    Case("stdin/fd0", "import os\nprint(os.read(0, 10))", ("ok",), has("b''")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_snippet_reply_and_recovery(case: Case, client: SandboxClient, sandbox_url: str) -> None:
    sid = client.create_session()
    try:
        code = case.code.replace("{port}", sandbox_url.rsplit(":", 1)[1])
        result = client.execute(sid, code)
        assert result.status in case.statuses, result
        if case.check is not None:
            assert case.check(result), result
        if result.status in ("timeout", "killed"):
            assert result.restarted and "restarted" in (result.error_message or "")
        assert len(result.stdout.encode()) <= 8192 + 200  # the cap plus the marker
        after = client.execute(sid, "import os\nprint('alive'); os.write(1, b'fd alive\\n'); print(os.getcwd())")
        assert after.status == "ok", after
        assert after.stdout.split() == ["alive", "/tmp", "fd", "alive"], after
    finally:
        client.close_session(sid)
    assert httpx.get(f"{sandbox_url}/healthz").json() == {"ok": True}


def test_battery_is_large_enough() -> None:
    assert len(CASES) >= 25
    categories = {c.name.split("/")[0] for c in CASES}
    assert {"loop", "bomb", "disk", "output", "host", "net", "kill", "stdio", "recursion", "stdin"} <= categories


def test_background_thread_output_stays_with_its_call(client: SandboxClient, session: str) -> None:
    r = client.execute(session, "import threading, time\n"
                                "def late():\n    time.sleep(0.5)\n    print('LATE')\n"
                                "threading.Thread(target=late).start()\nprint('early')")
    assert r.stdout == "early\n"
    r = client.execute(session, "import time\ntime.sleep(1.0)\nprint('next')")
    assert r.stdout == "next\n", r


def test_background_process_does_not_outlive_its_cell(client: SandboxClient, session: str) -> None:
    r = client.execute(session, "import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep 0.5; echo LATE-PROC'])")
    assert r.status == "ok"
    r = client.execute(session, "import time, os\ntime.sleep(1.0)\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]))")
    assert "LATE-PROC" not in r.output and r.stdout.strip() == "1", r

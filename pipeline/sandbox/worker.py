"""The interpreter loop that runs *inside* each sandbox: one persistent Python session.

Who calls it: `interpreter.py` starts it as `python -I -B -c <this file's source> <json settings>`
inside gVisor (or, with --unsafe-no-isolation, as a plain child process). It imports only the standard
library and must stay a single self-contained file.

Protocol: the host talks to it over the process's original stdin/stdout, which the worker moves to
private descriptors at start-up. Frames are a 4-byte big-endian length followed by UTF-8 JSON. The worker
sends ``{"ready": true}`` once, then answers each ``{"op": "exec", "code": ..., "max_output": ...}``
with one reply frame. User code runs in the main thread in its own module (`__main__`) whose globals are
not the worker's; the worker keeps private references to everything it needs, so a cell that replaces
`json`, `sys.stdout` or a builtin only breaks its own output, never the framing (and if it manages to
corrupt a reply anyway, the host sees a malformed frame and restarts the session).

Output: `sys.stdout`/`sys.stderr` are replaced at each call by in-memory captures (no syscalls per print,
which matters under gVisor). A write is kept only if it comes from the main thread or from a thread
started during this call; writes by threads left over from earlier calls, or after the call returned,
are dropped. Descriptor-level output (subprocesses, `os.write(1, ...)`) goes to unlinked scratch files
read back after the call; they live on their own small tmpfs, so
a cell that fills the scratch dir does not break the next cell's output. Processes started by a cell are killed when the cell ends. stdin is /dev/null.

What it does not guarantee: ordering between Python-level and descriptor-level output (Python's comes
first); that a cell cannot wedge its own session (a busy background thread, a patched stdlib) -- the
host's timeout and restart are the backstop; any security: the sandbox around it is the boundary.
"""

from __future__ import annotations

# ruff: noqa: SIM105 -- plain try/except on purpose: no contextlib frames in the hot path of every cell


def _main() -> None:  # noqa: C901 -- one closure on purpose: every reference below is private to it
    import ast
    import builtins
    import io
    import json
    import linecache
    import os
    import signal
    import sys
    import threading
    import traceback
    import types

    settings = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    scratch = settings.get("scratch", "/tmp")
    outdir = settings.get("outdir") or scratch  # where descriptor-level output is spooled
    echo_last = bool(settings.get("echo_last_expression", True))
    tb_frames = int(settings.get("traceback_frames", 8))

    # Private references: user code may rebind any of these module attributes without affecting us.
    _read, _write, _dup, _dup2, _open, _close = os.read, os.write, os.dup, os.dup2, os.open, os.close
    _fstat, _pread, _ftruncate, _lseek, _chdir = os.fstat, os.pread, os.ftruncate, os.lseek, os.chdir
    _waitpid, _kill, _getpid, _getcwd = os.waitpid, os.kill, os.getpid, os.getcwd
    _dumps = json.JSONEncoder(ensure_ascii=True, check_circular=False).encode
    _loads = json.loads
    _get_ident = threading.get_ident
    _active_threads = threading._active  # type: ignore[attr-defined]  # ident -> Thread; read-only
    _parse, _compile, _exec, _eval = ast.parse, builtins.compile, builtins.exec, builtins.eval
    _format_exception = traceback.format_exception
    _format_exception_only = traceback.format_exception_only
    _repr, _len, _str, _isinstance, _set, _type = repr, len, str, isinstance, set, type
    _min, _max, _bytes = min, max, bytes
    _OSError, _EOFError, _ChildProcessError, _SyntaxError = OSError, EOFError, ChildProcessError, SyntaxError
    _Expr, _Expression, _BaseException = ast.Expr, ast.Expression, BaseException
    _StringIO = io.StringIO
    _lcache = linecache.cache
    _sys = sys
    builtins_snapshot = dict(builtins.__dict__)
    _builtins_update = builtins.__dict__.update
    WNOHANG, SIGKILL = os.WNOHANG, signal.SIGKILL
    main_ident = _get_ident()
    _exit = os._exit
    forked_child = False

    def _mark_child() -> None:
        nonlocal forked_child
        forked_child = True

    # A child of os.fork() inside a cell would otherwise finish the cell and send a second reply.
    os.register_at_fork(after_in_child=_mark_child)
    # Inside gVisor the worker is PID 1 of its own PID namespace; in a pod each session has its own uid.
    # Either way kill(-1) reaches exactly this session's other processes.
    kill_all_ok = _getpid() == 1 or bool(settings.get("own_uid"))

    # Move the protocol channel off 0/1 (dup() descriptors are not inherited by subprocesses).
    ctl_in, ctl_out = _dup(0), _dup(1)
    devnull = _open("/dev/null", os.O_RDONLY)
    _dup2(devnull, 0)

    def _scratch_file() -> int:
        fd = _open(outdir, os.O_TMPFILE | os.O_RDWR, 0o600) if hasattr(os, "O_TMPFILE") else -1
        return fd

    out_files = []
    for target in (1, 2):
        try:
            fd = _scratch_file()
        except OSError:
            import tempfile
            fd, path = tempfile.mkstemp(dir=outdir)
            os.unlink(path)
        out_files.append(fd)
        _dup2(fd, target)
    out_fd, err_fd = out_files
    devnull_ino, out_ino, err_ino = (_fstat(fd).st_ino for fd in (devnull, out_fd, err_fd))
    _chdir(scratch)

    # A cell that hits the file-size limit on its own output gets EFBIG instead of being killed.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    user_main = types.ModuleType("__main__")
    user_main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = user_main
    sys.argv[:] = [""]
    sys.path[:] = [p for p in sys.path if p]  # no script dir
    sys.stdin = _StringIO("")
    sys.__stdin__ = sys.stdin  # type: ignore[misc, assignment]
    user_ns = user_main.__dict__

    def read_exact(n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            b = _read(ctl_in, n - got)
            if not b:
                raise EOFError
            chunks.append(b)
            got += _len(b)
        return b"".join(chunks)

    def send(obj: dict) -> None:
        data = _dumps(obj).encode()
        data = _len(data).to_bytes(4, "big") + data
        while data:
            n = _write(ctl_out, data)
            data = data[n:]

    class _Call:
        """Output budget and bookkeeping of one execute call."""

        __slots__ = ("budget", "dropped", "open", "preexisting")

        def __init__(self, budget: int) -> None:
            self.budget = budget
            self.dropped = 0
            self.open = True
            self.preexisting = _set(_active_threads)

        def accepts(self) -> bool:
            if not self.open:
                return False
            ident = _get_ident()
            return ident == main_ident or ident not in self.preexisting

    class _BinaryCapture:
        def __init__(self, text: _Capture) -> None:
            self._text = text

        def write(self, b: bytes) -> int:
            self._text.write(_bytes(b).decode("utf-8", "backslashreplace"))
            return _len(b)

        def flush(self) -> None:
            pass

    class _Capture(io.TextIOBase):
        """sys.stdout / sys.stderr of one call: keeps this call's writes in memory, up to the budget."""

        def __init__(self, call: _Call, fd: int) -> None:
            self._call = call
            self._parts: list = []
            self._fd = fd
            self.buffer = _BinaryCapture(self)

        def write(self, s: str) -> int:
            if not _isinstance(s, _str):
                raise TypeError(f"write() argument must be str, not {type(s).__name__}")
            call = self._call
            if call.accepts():
                n = _len(s)
                if n <= call.budget:
                    self._parts.append(s)
                    call.budget -= n
                else:
                    if call.budget > 0:
                        self._parts.append(s[: call.budget])
                    call.dropped += n - call.budget
                    call.budget = 0
            return _len(s)

        def writable(self) -> bool:
            return True

        def fileno(self) -> int:
            return self._fd

        def isatty(self) -> bool:
            return False

        @property
        def encoding(self) -> str:  # type: ignore[override]
            return "utf-8"

        @property
        def errors(self) -> str:  # type: ignore[override]
            return "backslashreplace"

        def text(self) -> str:
            return "".join(self._parts)

    def drain_fd(fd: int, size: int, call: _Call) -> str:
        """Read what processes wrote to the spool file `fd` during the call, then empty it."""
        if size:
            keep = _min(size, _max(call.budget, 0))
            data = _pread(fd, keep, 0) if keep else b""
            call.budget -= _len(data)
            call.dropped += size - _len(data)
            _ftruncate(fd, 0)
            _lseek(fd, 0, 0)
            return data.decode("utf-8", "backslashreplace")
        return ""

    def check_stdio() -> tuple:
        """Repair descriptors 0-2 and the cwd if the cell broke them; return the spool files' sizes.

        Checks cost one fstat per descriptor; repairs (dup2 is slow under gVisor) happen only when
        needed. A cwd that still exists is kept, like a notebook; a deleted one goes back to scratch.
        """
        sizes = []
        for target, fd, ino in ((0, devnull, devnull_ino), (1, out_fd, out_ino), (2, err_fd, err_ino)):
            try:
                st = _fstat(target)
                intact = st.st_ino == ino
            except _OSError:
                intact = False
            if not intact:
                _dup2(fd, target)
                st = _fstat(fd)
            sizes.append(st.st_size)
        try:
            _getcwd()  # fails once the cwd was deleted (stat(".") would not)
        except _OSError:
            _chdir(scratch)
        return sizes[1], sizes[2]

    def reap_children() -> None:
        """Kill every process a cell left behind (we are the sandbox's init) and reap them."""
        try:
            _waitpid(-1, WNOHANG)
        except _OSError:  # ChildProcessError: no children at all, the common case
            return
        if kill_all_ok:
            try:
                _kill(-1, SIGKILL)  # every process of the session except us
            except _OSError:
                pass
        else:
            kill_children_unisolated()
        while True:
            try:
                _waitpid(-1, 0)
            except _OSError:
                return

    def kill_children_unisolated() -> None:
        # Without a PID namespace kill(-1) would hit every process of this uid on the host: only
        # signal our own direct children (their children are orphaned to the host's init).
        me = _str(_getpid())
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except _OSError:
                continue
            if fields[1].decode() == me:
                try:
                    _kill(int(entry), SIGKILL)
                except _OSError:
                    pass

    def short_traceback(e: BaseException, filename_prefix: str) -> str:
        tb = e.__traceback__
        # Drop the worker's own frames: the model only needs its cell's frames.
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(filename_prefix):
            tb = tb.tb_next
        try:
            lines = _format_exception(_type(e), e, tb, limit=-tb_frames if tb_frames else None)
        except _BaseException:
            return f"{_type(e).__name__}: <unprintable exception>"
        text = "".join(lines)
        if _len(text) > 4000:
            text = text[:1000] + "\n[... traceback cut ...]\n" + text[-3000:]
        return text

    def describe(e: BaseException) -> tuple:
        try:
            msg = _str(e)
        except _BaseException:
            msg = "<unprintable exception>"
        return _type(e).__name__, msg

    def run(code: str, max_output: int, cell: int) -> dict:
        call = _Call(max_output)
        out, err = _Capture(call, 1), _Capture(call, 2)
        _sys.stdout, _sys.stderr = out, err
        _sys.stdin = _StringIO("")
        filename = f"<cell-{cell}>"
        _lcache[filename] = (_len(code), None, code.splitlines(True), filename)
        status, etype, emsg, tb_text, exc = "ok", None, None, None, None
        try:
            tree = _parse(code, filename, "exec")
            echo = None
            last = tree.body[-1] if tree.body else None
            if echo_last and _isinstance(last, _Expr):
                tree.body.pop()
                echo = _compile(_Expression(last.value), filename, "eval")  # type: ignore[union-attr]
            _exec(_compile(tree, filename, "exec"), user_ns)
            if echo is not None:
                value = _eval(echo, user_ns)
                if value is not None:
                    user_ns["_"] = value
                    out.write(_repr(value) + "\n")
        except _BaseException as e:  # SystemExit and KeyboardInterrupt too: the session lives on
            status = "error"
            etype, emsg = describe(e)
            exc = e
            if _isinstance(e, _SyntaxError):
                tb_text = "".join(_format_exception_only(_type(e), e))
        if forked_child:  # os.fork() in the cell and the child got here: it must never answer the host
            _exit(0)
        call.open = False
        _builtins_update(builtins_snapshot)  # a cell that broke `builtins.len` must not break the worker
        if tb_text is None and exc is not None:
            tb_text = short_traceback(exc, "<cell-")
        reap_children()
        out_size, err_size = check_stdio()
        stdout = out.text() + drain_fd(out_fd, out_size, call)
        stderr = err.text() + drain_fd(err_fd, err_size, call)
        return {
            "status": status,
            "stdout": stdout.encode("utf-8", "backslashreplace").decode("utf-8"),
            "stderr": stderr.encode("utf-8", "backslashreplace").decode("utf-8"),
            "error_type": etype,
            "error_message": emsg if emsg is None else emsg[:2000],
            "traceback": tb_text,
            "dropped_bytes": call.dropped,
        }

    # Between calls, and for threads that outlive their call, output goes nowhere.
    idle = _Call(0)
    idle.open = False
    sys.__stdout__ = sys.stdout = _Capture(idle, 1)  # type: ignore[misc, assignment]
    sys.__stderr__ = sys.stderr = _Capture(idle, 2)  # type: ignore[misc, assignment]
    for module in settings.get("preload") or ():  # warm interpreters pay the slow imports, not cells
        try:
            __import__(module)
        except Exception:
            pass
    send({"ready": True, "pid": _getpid()})
    cell = 0
    while True:
        try:
            header = read_exact(4)
            request = _loads(read_exact(int.from_bytes(header, "big")))
        except (_EOFError, _OSError):
            break
        op = request.get("op")
        if op == "exec":
            cell += 1
            reply = run(request["code"], int(request.get("max_output", 65536)), cell)
        elif op == "ping":
            reply = {"status": "ok"}
        else:
            reply = {"status": "error", "error_type": "ProtocolError", "error_message": f"unknown op {op!r}"}
        try:
            send(reply)
        except _OSError:
            break
    os._exit(0)


if __name__ == "__main__":
    _saved_stderr = __import__("os").dup(2)
    try:
        _main()
    except BaseException:  # start-up failed: say why on the original stderr, which the host logs
        import os as _os
        import traceback as _tb

        _os.write(_saved_stderr, _tb.format_exc().encode())
        _os._exit(70)

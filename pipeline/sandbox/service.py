"""The sandbox HTTP service (`codeground sandbox serve`): FastAPI app, uvicorn runner and CLI.

Who calls it: every Sandbox pod runs `codeground sandbox serve`; `codeground run` and the tests start it
through `local.py`; the lead's CLI registers the subcommand with :func:`add_cli`. Routes (OpenAPI at
/docs and /openapi.json):

    POST   /v1/sessions                 create a session (201; 429 + Retry-After when full)
    POST   /v1/sessions/{id}/execute    run a cell {code, timeout?} -> reply with status/stdout/stderr/...
    POST   /v1/sessions/{id}/reset      fresh interpreter, same id
    DELETE /v1/sessions/{id}            close (scratch dir deleted with the sandbox)
    GET    /v1/sessions                 list; GET /healthz, GET /readyz, GET /metrics (Prometheus)

A cell's own failure (exception, timeout, kill, truncation) is a 200 with that status; only the
service's failures are 4xx/5xx, so clients can tell code errors from infrastructure errors.

What it does not guarantee: authentication (run it on a private network / cluster-internal Service);
sessions surviving a restart of the process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from codeground.pipeline.errors import CodegroundError

from .config import SandboxConfig
from .interpreter import InterpreterStartError
from .launchers import make_launcher
from .metrics import SandboxMetrics
from .pool import WarmPool
from .sessions import SessionLimitError, SessionManager, SessionNotFoundError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2  # what a full server tells clients to wait before creating again


class ExecuteRequest(BaseModel):
    code: str = Field(description="Python source of one cell")
    timeout: float | None = Field(default=None, gt=0, description="seconds; capped at the server's limit")


class ExecuteReply(BaseModel):
    status: Literal["ok", "error", "timeout", "killed", "output_truncated"]
    stdout: str
    stderr: str
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    duration_s: float
    truncated: bool = False
    restarted: bool = Field(default=False, description="the interpreter was replaced: earlier state is gone")


class SessionCreated(BaseModel):
    id: str
    warm: bool = Field(description="the interpreter came from the warm pool")
    sessions_open: int
    max_sessions: int


def create_app(config: SandboxConfig, *, workdir: str | None = None) -> FastAPI:
    """The service for one config. Refuses to build (SandboxUnavailableError) when runsc is missing."""
    own_workdir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="codeground-sandbox-")
    launcher = make_launcher(config, workdir)  # fails fast, before the server binds its port
    metrics = SandboxMetrics()
    pool = WarmPool(launcher.spec, config.warm_pool, config.pool_start_concurrency,
                    on_boot=lambda s, ok: metrics.boot_seconds.labels(ok=str(ok).lower()).observe(s))
    manager = SessionManager(config, pool, metrics)
    metrics.pool_ready.set_function(lambda: pool.ready)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("sandbox config: %s", config.summary())
        pool.start()
        manager.start()
        try:
            yield
        finally:
            await manager.close_all()
            await pool.close()
            if own_workdir:
                shutil.rmtree(workdir, ignore_errors=True)

    app = FastAPI(title="codeground sandbox", version="1", lifespan=lifespan,
                  description="Persistent Python sessions in gVisor sandboxes, for models that reason in code.")
    app.state.config, app.state.manager, app.state.pool, app.state.metrics = config, manager, pool, metrics
    if config.denies_local_clients:
        app.add_middleware(DenyLocalClients)

    @app.exception_handler(SessionNotFoundError)
    async def _not_found(request: Request, exc: SessionNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(SessionLimitError)
    async def _full(request: Request, exc: SessionLimitError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(InterpreterStartError)
    async def _no_sandbox(request: Request, exc: InterpreterStartError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.post("/v1/sessions", status_code=201, response_model=SessionCreated)
    async def create_session() -> dict[str, Any]:
        session, warm = await manager.create()
        return {"id": session.id, "warm": warm, "sessions_open": len(manager.sessions),
                "max_sessions": config.max_sessions}

    @app.post("/v1/sessions/{session_id}/execute", response_model=ExecuteReply)
    async def execute(session_id: str, body: ExecuteRequest) -> JSONResponse:
        size = len(body.code.encode("utf-8", "surrogatepass"))
        if size > config.max_code_bytes:  # the model's doing, so a cell result, not an HTTP error
            manager.get(session_id)
            return JSONResponse({
                "status": "error", "stdout": "", "stderr": "", "error_type": "CodeTooLarge",
                "error_message": f"the cell is {size} bytes; the limit is {config.max_code_bytes}",
                "traceback": None, "duration_s": 0.0, "truncated": False, "restarted": False})
        # A plain JSONResponse skips re-validating the reply (the model still documents it): ~0.1 ms a cell.
        return JSONResponse(await manager.execute(session_id, body.code, body.timeout))

    @app.post("/v1/sessions/{session_id}/reset")
    async def reset(session_id: str) -> dict[str, str]:
        await manager.reset(session_id)
        return {"id": session_id}

    @app.delete("/v1/sessions/{session_id}", status_code=204)
    async def close(session_id: str) -> Response:
        await manager.close(session_id)
        return Response(status_code=204)

    @app.get("/v1/sessions")
    async def list_sessions() -> dict[str, Any]:
        return {"sessions": manager.list(), "sessions_open": len(manager.sessions),
                "max_sessions": config.max_sessions}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = pool.boots_ok > 0 or config.warm_pool == 0
        body = {"ready": ready, "isolation": launcher.isolation, "pool_ready": pool.ready,
                "sessions_open": len(manager.sessions), "max_sessions": config.max_sessions,
                "last_error": pool.last_error}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


class DenyLocalClients:
    """ASGI middleware: 403 for /v1 requests whose peer is this server's own address (or loopback).

    With isolation "pod" the sessions are processes in the server's pod: they reach the service on
    127.0.0.1 or the pod IP, while real clients (stage pods) and kubelet probes come from elsewhere.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            client = (scope.get("client") or ("", 0))[0]
            server = (scope.get("server") or ("", 0))[0]
            if client == server or client.startswith("127.") or client in ("::1", "localhost"):
                response = JSONResponse({"detail": "requests from inside the sandbox pod are refused"}, 403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def serve(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the service until SIGINT/SIGTERM (blocking)."""
    import uvicorn

    app = create_app(config)
    loop = "uvloop" if _has("uvloop") else "asyncio"
    http = "httptools" if _has("httptools") else "h11"
    # Long keep-alive: rollouts pause between cells while the model generates; clients keep 60 s.
    uvicorn.run(app, host=host, port=port, loop=loop, http=http, log_level="warning", access_log=False,
                timeout_keep_alive=120)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    d = SandboxConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a pod)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--timeout-seconds", type=float, default=d.timeout_seconds, help="wall clock per cell")
    parser.add_argument("--memory", default=str(d.memory_bytes), help="address space per process, e.g. 1Gi")
    parser.add_argument("--max-processes", type=int, default=d.max_processes)
    parser.add_argument("--max-output-bytes", type=int, default=d.max_output_bytes)
    parser.add_argument("--max-file-bytes", type=int, default=d.max_file_bytes)
    parser.add_argument("--scratch-bytes", type=int, default=d.scratch_bytes, help="tmpfs size of /tmp")
    parser.add_argument("--max-sessions", type=int, default=d.max_sessions)
    parser.add_argument("--session-idle-seconds", type=float, default=d.session_idle_seconds)
    parser.add_argument("--warm-pool", type=int, default=d.warm_pool)
    parser.add_argument("--max-parallel-cells", type=int, default=d.max_parallel_cells,
                        help="cells executing at once (the rest queue outside their timeout); 0 = 2 x CPUs")
    parser.add_argument("--runsc", default=d.runsc_path, help="path of the gVisor runsc binary")
    parser.add_argument("--preload", default="", help="comma-separated modules warm interpreters import, "
                        "e.g. numpy,sympy (faster first import; more memory per session)")
    parser.add_argument("--python", default=d.python_executable,
                        help="interpreter of the sessions (default: the service's own, with its packages)")
    parser.add_argument("--runsc-platform", default=d.runsc_platform, help="gVisor platform (ptrace, kvm, ...)")
    parser.add_argument("--no-echo-last-expression", action="store_true",
                        help="do not print the value of a cell's last expression")
    parser.add_argument("--isolation", choices=["gvisor", "pod"], default="gvisor",
                        help="gvisor: a runsc sandbox per session; pod: the pod runs under gVisor "
                             "(runtimeClassName: gvisor) and sessions get their own uid in it")
    parser.add_argument("--allow-local-clients", action="store_true",
                        help="with --isolation pod, still accept API calls from this host (testing only)")
    parser.add_argument("--unsafe-no-isolation", action="store_true",
                        help="DEBUGGING ONLY: run code on this host without gVisor")
    parser.add_argument("--log-level", default=os.environ.get("CODEGROUND_LOG_LEVEL", "INFO"))


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    from .config import parse_quantity

    return SandboxConfig(
        timeout_seconds=args.timeout_seconds, memory_bytes=parse_quantity(args.memory, "--memory"),
        max_processes=args.max_processes, max_output_bytes=args.max_output_bytes,
        max_file_bytes=args.max_file_bytes, scratch_bytes=args.scratch_bytes, max_sessions=args.max_sessions,
        session_idle_seconds=args.session_idle_seconds, warm_pool=args.warm_pool, runsc_path=args.runsc, python_executable=args.python,
        preload=tuple(m.strip() for m in args.preload.split(",") if m.strip()),
        runsc_platform=args.runsc_platform, max_parallel_cells=args.max_parallel_cells,
        echo_last_expression=not args.no_echo_last_expression,
        isolation="none" if args.unsafe_no_isolation else args.isolation,
        deny_local_clients=False if args.allow_local_clients else None)


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of `sandbox serve`; returns the exit code (2 when isolation is unavailable)."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        serve(config, args.host, args.port)
    except CodegroundError as e:
        log.error("%s", e)
        return 2
    return 0


def add_cli(subparsers: Any) -> None:
    """Register `sandbox serve ...` on an argparse subparsers object; the handler is `args.func(args)`."""
    sandbox = subparsers.add_parser("sandbox", help="the code-execution sandbox service")
    sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    serve_parser = sub.add_parser("serve", help="run the sandbox HTTP service")
    add_serve_arguments(serve_parser)
    serve_parser.set_defaults(func=run_serve)


def main(argv: list[str] | None = None) -> int:
    """`python -m codeground.pipeline.sandbox serve ...`."""
    parser = argparse.ArgumentParser(prog="python -m codeground.pipeline.sandbox")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run the sandbox HTTP service")
    add_serve_arguments(serve_parser)
    serve_parser.set_defaults(func=run_serve)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

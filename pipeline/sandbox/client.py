"""Client of the sandbox service: asyncio (for rollouts) and a small sync wrapper (scripts, tests).

Who calls it: distill, GRPO rollouts and evaluate run model code through :class:`AsyncSandboxClient`;
scripts and tests use :class:`SandboxClient`.

Endpoints: one base URL (``http://127.0.0.1:8080``), several replicas (a list, or a comma-separated
string of pod URLs), or a Kubernetes headless Service written ``dns+http://NAME.NS.svc:8080``: the name
is resolved to every pod IP (re-resolved every 30 s), and each pod is an endpoint. New sessions go to the
least-loaded endpoint (sessions it reported open, plus this client's own); every call of a session goes
to the pod that holds it (sticky), because the interpreter lives in that pod's memory.

Errors: a cell's own failure is never an exception -- it is an :class:`ExecResult` with status error,
timeout, killed or output_truncated. :class:`SandboxInfraError` means the service failed (pod gone,
connection refused, 5xx, server full after retries, session lost); callers retry the sample or drop it
with a recorded reason. Connection failures are retried (the request never reached a server); a request
that may have run code is never retried.

What it does not guarantee: sessions surviving a pod restart (they raise SandboxSessionLost); sharing
sessions between client objects (the session -> pod map lives in this client). Transport: aiohttp
(about 1 ms less per call than httpx, which matters against a 2 ms budget), keep-alive connections.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp

from codeground.pipeline.errors import InfrastructureError

T = TypeVar("T")
Status = Literal["ok", "error", "timeout", "killed", "output_truncated"]
DNS_PREFIX = "dns+"
DNS_TTL_S = 30.0
KEEPALIVE_S = 60.0  # below the server's keep-alive (120 s) so the client never reuses a closed connection


@dataclass
class _Reply:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        import json

        return json.loads(self.text)


class SandboxInfraError(InfrastructureError):
    """The sandbox service failed (not the code): pod gone, connection refused, 5xx, full after retries."""


class SandboxSessionLost(SandboxInfraError):
    """The session no longer exists on its pod (closed, reaped as idle, or the pod restarted)."""


@dataclass
class ExecResult:
    status: Status
    stdout: str
    stderr: str
    error_type: str | None
    error_message: str | None
    traceback: str | None
    duration_s: float
    truncated: bool = False  # output was cut to the server's max_output_bytes (marker in stdout)
    restarted: bool = False  # the interpreter was replaced: state from earlier cells is gone

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "output_truncated")

    @property
    def output(self) -> str:
        """What the model sees: stdout, then stderr, then the short traceback or what stopped the cell."""
        parts = [self.stdout]
        if self.stderr:
            parts.append(self.stderr)
        if self.status == "error" and self.traceback:
            parts.append(self.traceback)
        elif self.status in ("timeout", "killed"):
            parts.append(f"{self.error_type}: {self.error_message}\n")
        text = ""
        for part in parts:
            if text and not text.endswith("\n"):
                text += "\n"
            text += part
        return text


class AsyncSandboxClient:
    """Async client with connection reuse, many concurrent sessions and sticky routing."""

    def __init__(self, endpoints: str | Sequence[str], *, request_timeout: float = 60, retries: int = 3,
                 max_connections: int = 256):
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ValueError("AsyncSandboxClient: endpoints is empty; pass a URL such as http://127.0.0.1:8080")
        self._specs = [e.rstrip("/") for e in endpoints]
        self._endpoints: list[str] = [] if any(s.startswith(DNS_PREFIX) for s in self._specs) else list(self._specs)
        self._resolved_at = 0.0
        self.request_timeout = request_timeout
        self.retries = retries
        self._max_connections = max_connections
        self._http_session: aiohttp.ClientSession | None = None  # created inside the running loop
        self._owner: dict[str, str] = {}  # session id -> endpoint holding it
        self._load: dict[str, int] = {}  # endpoint -> sessions open there, as last seen
        self._avoid_until: dict[str, float] = {}  # endpoint -> monotonic time it may be tried again

    async def __aenter__(self) -> AsyncSandboxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http_session is not None:
            await self._http_session.close()
            self._http_session = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http_session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=KEEPALIVE_S,
                                             ttl_dns_cache=int(DNS_TTL_S))
            self._http_session = aiohttp.ClientSession(connector=connector)
        return self._http_session

    async def _request(self, method: str, url: str, json: Any = None, timeout: float | None = None) -> _Reply:
        t = aiohttp.ClientTimeout(total=timeout or self.request_timeout, sock_connect=5.0)
        async with self._session().request(method, url, json=json, timeout=t) as r:
            return _Reply(r.status, dict(r.headers), await r.text())

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    def endpoint_of(self, session_id: str) -> str:
        try:
            return self._owner[session_id]
        except KeyError:
            raise SandboxSessionLost(f"session {session_id!r} was not created by this client or was closed") from None

    async def _resolve(self) -> None:
        if self._endpoints and time.monotonic() - self._resolved_at < DNS_TTL_S:
            return
        if not any(s.startswith(DNS_PREFIX) for s in self._specs):
            return
        loop = asyncio.get_running_loop()
        found: list[str] = []
        for spec in self._specs:
            if not spec.startswith(DNS_PREFIX):
                found.append(spec)
                continue
            url = urlsplit(spec[len(DNS_PREFIX):])
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                infos = await loop.getaddrinfo(url.hostname, port, type=socket.SOCK_STREAM)
            except OSError as e:
                raise SandboxInfraError(f"cannot resolve sandbox service {url.hostname!r}: {e}") from None
            for info in infos:
                host = str(info[4][0])
                host = f"[{host}]" if ":" in host else host
                found.append(f"{url.scheme}://{host}:{port}")
        self._endpoints = sorted(set(found))
        self._resolved_at = time.monotonic()

    def _candidates(self) -> list[str]:
        now = time.monotonic()
        usable = [e for e in self._endpoints if self._avoid_until.get(e, 0) <= now] or list(self._endpoints)
        random.shuffle(usable)  # ties broken at random
        return sorted(usable, key=lambda e: self._load.get(e, 0))

    async def create_session(self) -> str:
        """Open a session on the least-loaded endpoint; retries other endpoints on failure."""
        last = "no endpoint answered"
        for attempt in range(self.retries + 1):
            await self._resolve()
            for endpoint in self._candidates():
                try:
                    r = await self._request("POST", f"{endpoint}/v1/sessions")
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    self._avoid_until[endpoint] = time.monotonic() + 5.0
                    self._resolved_at = 0.0  # pods may have moved: resolve again next time
                    last = f"{endpoint}: {type(e).__name__}: {e}"
                    continue
                if r.status_code == 201:
                    body = r.json()
                    self._owner[body["id"]] = endpoint
                    self._load[endpoint] = int(body.get("sessions_open", self._load.get(endpoint, 0) + 1))
                    return str(body["id"])
                if r.status_code == 429:
                    retry_after = float(r.headers.get("Retry-After", "1"))
                    self._avoid_until[endpoint] = time.monotonic() + retry_after
                    self._load[endpoint] = 1 << 30
                last = f"{endpoint}: HTTP {r.status_code}: {r.text[:300]}"
            await asyncio.sleep(min(0.25 * 2**attempt, 4.0))
        raise SandboxInfraError(f"could not create a sandbox session after {self.retries + 1} rounds; last: {last}")

    async def _call(self, method: str, session_id: str, path: str, json: Any = None,
                    timeout: float | None = None) -> _Reply:
        endpoint = self.endpoint_of(session_id)
        url = f"{endpoint}/v1/sessions/{session_id}{path}"
        for attempt in range(self.retries + 1):
            try:
                return await self._request(method, url, json=json, timeout=timeout)
            except aiohttp.ClientConnectorError as e:  # never reached the server: safe to retry
                if attempt == self.retries:
                    raise SandboxInfraError(f"sandbox {endpoint} refused connections: {e}") from None
                await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:  # may have run the code: do not retry
                raise SandboxInfraError(f"sandbox {endpoint} failed during {path or 'the call'}: "
                                        f"{type(e).__name__}: {e}") from None
        raise AssertionError("unreachable")

    def _check(self, r: _Reply, session_id: str) -> None:
        if r.status_code == 404:
            self._forget(session_id)
            raise SandboxSessionLost(f"session {session_id!r} is gone from its sandbox: {r.text[:300]}")
        if r.status_code >= 400:
            raise SandboxInfraError(f"sandbox answered HTTP {r.status_code}: {r.text[:300]}")

    def _forget(self, session_id: str) -> None:
        endpoint = self._owner.pop(session_id, None)
        if endpoint is not None:
            self._load[endpoint] = max(0, self._load.get(endpoint, 1) - 1)

    async def execute(self, session_id: str, code: str, timeout: float | None = None) -> ExecResult:
        """Run one cell; the code's own failures come back as the result's status, never raised."""
        http_timeout = max(self.request_timeout, (timeout or 0) + 10.0)
        body: dict[str, Any] = {"code": code}
        if timeout is not None:
            body["timeout"] = timeout
        r = await self._call("POST", session_id, "/execute", json=body, timeout=http_timeout)
        self._check(r, session_id)
        return ExecResult.from_json(r.json())

    async def reset(self, session_id: str) -> None:
        self._check(await self._call("POST", session_id, "/reset"), session_id)

    async def close_session(self, session_id: str) -> None:
        """Close a session; closing one that is already gone is not an error."""
        if session_id not in self._owner:
            return
        r = await self._call("DELETE", session_id, "")
        if r.status_code not in (204, 404):
            self._check(r, session_id)
        self._forget(session_id)


class SandboxClient:
    """Blocking wrapper of :class:`AsyncSandboxClient` (runs its own event loop in a thread)."""

    def __init__(self, endpoints: str | Sequence[str], *, request_timeout: float = 60, retries: int = 3):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sandbox-client", daemon=True)
        self._thread.start()
        self._client: AsyncSandboxClient = self._run(self._make(endpoints, request_timeout, retries))

    @staticmethod
    async def _make(endpoints: str | Sequence[str], request_timeout: float, retries: int) -> AsyncSandboxClient:
        return AsyncSandboxClient(endpoints, request_timeout=request_timeout, retries=retries)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def create_session(self) -> str:
        return self._run(self._client.create_session())

    def execute(self, session_id: str, code: str, timeout: float | None = None) -> ExecResult:
        return self._run(self._client.execute(session_id, code, timeout))

    def reset(self, session_id: str) -> None:
        self._run(self._client.reset(session_id))

    def close_session(self, session_id: str) -> None:
        self._run(self._client.close_session(session_id))

    def endpoint_of(self, session_id: str) -> str:
        return self._client.endpoint_of(session_id)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> SandboxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""aiohttp pieces every service shares: JSON errors, bearer auth, health, readiness, metrics,
and the server's hardening (no version banner, a header-read timeout, header size limits).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp.web_response
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from shared.config import CommonSettings
from shared.metrics import HTTP_REQUESTS
from shared.redis import RedisMeter

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadinessCheck = Callable[[], Awaitable[str | None]]  # None = ready, else the reason
READINESS_CHECKS = web.AppKey("readiness_checks", list[tuple[str, ReadinessCheck]])

# aiohttp sends `Server: Python/3.x aiohttp/3.y` on every response, its own error pages for
# malformed requests included (those reach no app hook): name no versions, in every service.
SERVER_NAME = "tongda"
aiohttp.web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]

MAX_REQUEST_LINE_BYTES = 8190
MAX_HEADER_FIELD_BYTES = 8190
MAX_HEADERS = 64


def server_options(settings: CommonSettings) -> dict[str, Any]:
    """Keyword arguments for `web.AppRunner(app, **...)` / `web.run_app(app, **...)`.

    `keepalive_timeout` is the header-read timeout: aiohttp arms it when a connection opens
    and after each response, and closes the connection if no complete request head arrived
    by then, however slowly bytes trickle in (slowloris), so it bounds idle keep-alive too.
    """
    return {
        "keepalive_timeout": settings.http_header_timeout_s,
        "max_line_size": MAX_REQUEST_LINE_BYTES,
        "max_field_size": MAX_HEADER_FIELD_BYTES,
        "max_headers": MAX_HEADERS,
    }


def json_error(status: int, error: str, detail: str, **extra: Any) -> web.Response:
    return web.json_response({"error": error, "detail": detail, **extra}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON; an unexpected exception is logged and becomes a 500."""
    route = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
    )
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        HTTP_REQUESTS.labels(route=route, code=str(exc.status)).inc()
        if exc.content_type == "application/json":
            raise
        return json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, route)
        HTTP_REQUESTS.labels(route=route, code="500").inc()
        return json_error(500, "internal_error", "unexpected error; see the service log")
    HTTP_REQUESTS.labels(route=route, code=str(resp.status)).inc()
    return resp


def bearer_auth(token: str, prefix: str = "/v1/") -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(prefix):
            got = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(got, expected):
                return json_error(401, "unauthorized", "missing or wrong bearer token")
        return await handler(request)

    return middleware


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    failures = {}
    for name, check in request.app[READINESS_CHECKS]:
        try:
            reason = await asyncio.wait_for(check(), timeout=3)
        except Exception as exc:  # any failure of a check means not ready
            reason = f"{type(exc).__name__}: {exc}"
        if reason:
            failures[name] = reason
    if failures:
        return web.json_response({"status": "not_ready", "failures": failures}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(_: web.Request) -> web.Response:
    resp = web.Response(body=generate_latest())
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


def add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


def redis_check(redis: Redis, meter: RedisMeter | None = None) -> ReadinessCheck:
    """PING; with `meter`, timed as `ping` and reflected in tongda_redis_up."""

    async def check() -> str | None:
        await (meter.ping(redis) if meter is not None else redis.ping())
        return None

    return check

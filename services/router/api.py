"""The router's HTTP API (docs/CONTRACT.md "HTTP (router)"): submit and inspect notifications,
inspect inquiries, record a borrower's channel preference."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from services.router.inquiries import InquiryDesk
from services.router.intake import MessageNeeds, check_request
from services.router.plans import PlanBook
from services.router.state import NotificationState
from services.router.store import Keys
from shared.config import RouterSettings
from shared.contract.codec import (
    MAX_VALUE_BYTES,
    check_depth,
    check_schema,
    decode,
    parse_json,
)
from shared.contract.models import CHANNELS, NotificationRequested
from shared.errors import InvalidEvent
from shared.http import (
    READINESS_CHECKS,
    ReadinessCheck,
    add_ops_routes,
    bearer_auth,
    error_middleware,
    json_error,
)
from shared.masking import mask_address

SETTINGS = web.AppKey("settings", RouterSettings)
PRODUCER = web.AppKey("producer", AIOKafkaProducer)
REDIS = web.AppKey("redis", Redis)
PLANS = web.AppKey("plans", PlanBook)
KEYS = web.AppKey("keys", Keys)
NEEDS = web.AppKey("needs", MessageNeeds)
DESK = web.AppKey("desk", InquiryDesk)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


SCHEMA = "notification.requested/v1"
FIELD_CODES = ("invalid_fields", "too_deep")  # their detail starts with the field's name


def _invalid(exc: InvalidEvent) -> web.Response:
    field = exc.detail.split(":", 1)[0] if exc.code in FIELD_CODES else "schema"
    return json_error(400, exc.code, exc.detail, field=field)


async def post_notification(request: web.Request) -> web.Response:
    """Validate the body and publish it to the requests topic; 202 means it will be routed.

    What is published is exactly what was validated: the record's bytes (the body with its
    `schema` added, re-serialised) are decoded by the same `decode` the router runs on them,
    and refused with 413 if they are over the limit the router applies.
    """
    settings = request.app[SETTINGS]
    body = await request.read()
    if len(body) > MAX_VALUE_BYTES:
        return json_error(413, "too_large", f"body is over {MAX_VALUE_BYTES} bytes")
    try:
        obj = parse_json(body)
        if not isinstance(obj, dict):
            return json_error(400, "malformed_json", "body must be a JSON object")
        obj.setdefault("schema", SCHEMA)
        check_schema(obj, SCHEMA)
        check_depth(obj)  # before serialising it again (encoders are recursion-limited)
        record = orjson.dumps(obj)
        if len(record) > MAX_VALUE_BYTES:
            return json_error(
                413,
                "too_large",
                f"the record to publish is {len(record)} bytes (the body with its schema, "
                f"re-serialised); the limit is {MAX_VALUE_BYTES} bytes",
            )
        req = decode(record, NotificationRequested)
    except InvalidEvent as exc:
        return _invalid(exc)
    try:
        check_request(req, request.app[PLANS], request.app[NEEDS])
    except InvalidEvent as exc:
        field = "type" if exc.code == "unknown_type" else exc.detail.split(":", 1)[0]
        return json_error(400, exc.code, exc.detail, field=field)
    await request.app[PRODUCER].send_and_wait(
        settings.topics.requested, value=record, key=req.customer_id.encode()
    )
    return web.json_response({"id": req.id}, status=202, dumps=_dumps)


def state_view(state: NotificationState) -> dict[str, Any]:
    """What the API shows of a notification: no raw addresses."""
    leg = state.legs[state.leg] if state.legs and not state.final else None
    return {
        "id": state.id,
        "customer_id": state.customer_id,
        "type": state.type,
        "category": state.category,
        "priority": state.priority,
        "status": state.status,
        "channel": state.channel,
        "current": None
        if leg is None
        else {
            "channel": leg.channel,
            "recipient": mask_address(leg.channel, leg.address),
            "attempt": state.attempt,
            "phase": state.phase,
        },
        "plan": [
            {
                "channel": lg.channel,
                "recipient": mask_address(lg.channel, lg.address),
                "target": lg.kind,
            }
            for lg in state.legs
        ],
        "attempts": [
            {
                "channel": a.channel,
                "recipient": a.recipient,
                "outcome": a.outcome,
                "at": a.at.isoformat(),
                "provider": a.provider,
                "detail": a.detail,
            }
            for a in state.attempts
        ],
        "occurred_at": state.occurred_at.isoformat(),
        "received_at": state.received_at.isoformat(),
        "completed_at": state.completed_at.isoformat() if state.completed_at else None,
    }


async def get_notification(request: web.Request) -> web.Response:
    nid = request.match_info["id"]
    # the id does not tell the customer, so the group: looked up in every group at once
    state = await request.app[DESK].store.find_state(nid)
    if state is None:
        return json_error(404, "not_found", f"no notification with id {nid!r}")
    return web.json_response(state_view(state), dumps=_dumps)


async def get_timeline(request: web.Request) -> web.Response:
    cid = request.match_info["customer_id"]
    try:
        limit = min(int(request.query.get("limit", "100")), 1000)
        if limit < 1:
            raise ValueError
    except ValueError:
        return json_error(
            400, "invalid_query", "limit must be an integer from 1 to 1000", field="limit"
        )
    raw = await request.app[REDIS].lrange(request.app[KEYS].timeline(cid), 0, limit - 1)
    records = [orjson.loads(r) for r in raw]
    return web.json_response({"customer_id": cid, "records": records}, dumps=_dumps)


async def get_inquiry(request: web.Request) -> web.Response:
    iid = request.match_info["id"]
    view = await request.app[DESK].view(iid)
    if view is None:
        return json_error(404, "not_found", f"no inquiry with id {iid!r}")
    return web.json_response(view, dumps=_dumps)


async def put_preference(request: web.Request) -> web.Response:
    """An agent records a borrower's opt-out or opt-in: `{"state": "opted_out"}`."""
    cid, channel = request.match_info["customer_id"], request.match_info["channel"]
    if channel not in CHANNELS:
        return json_error(
            400, "invalid_channel", f"channel must be one of {', '.join(CHANNELS)}", field="channel"
        )
    try:
        body = parse_json(await request.read())
    except InvalidEvent as exc:
        return _invalid(exc)
    state = body.get("state") if isinstance(body, dict) else None
    if state not in ("opted_out", "opted_in"):
        return json_error(
            400, "invalid_fields", "state: must be opted_out or opted_in", field="state"
        )
    if not 1 <= len(cid) <= 128:
        return json_error(400, "invalid_fields", "customer_id: 1 to 128 characters")
    event = await request.app[DESK].set_preference(cid, channel, state)
    return web.json_response(event.model_dump(mode="json", by_alias=True), dumps=_dumps)


def create_api(
    settings: RouterSettings,
    producer: AIOKafkaProducer,
    redis: Redis,
    plans: PlanBook,
    desk: InquiryDesk,
    checks: list[tuple[str, ReadinessCheck]],
) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, bearer_auth(settings.api_token.get_secret_value())],
        client_max_size=MAX_VALUE_BYTES + 1024,
    )
    app[SETTINGS] = settings
    app[PRODUCER] = producer
    app[REDIS] = redis
    app[PLANS] = plans
    app[KEYS] = desk.store.keys
    app[NEEDS] = MessageNeeds(plans)
    app[DESK] = desk
    app[READINESS_CHECKS] = checks
    app.router.add_post("/v1/notifications", post_notification)
    app.router.add_get("/v1/notifications/{id}", get_notification)
    app.router.add_get("/v1/customers/{customer_id}/timeline", get_timeline)
    app.router.add_get("/v1/inquiries/{id}", get_inquiry)
    app.router.add_put("/v1/customers/{customer_id}/preferences/{channel}", put_preference)
    add_ops_routes(app)
    return app

"""The router's HTTP API (contract "HTTP (router)") on the real broker and Redis, with the
batch engine running so that what is POSTed is routed."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from services.router.api import create_api
from services.router.plans import load_plans
from shared.http import redis_check
from tests.router_support import Harness, Reader, engine_harness, value

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def body(nid: str, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": nid,
        "type": "overdue_notice",
        "customer_id": "api-c1",
        "occurred_at": datetime.now(UTC).isoformat(),
        "data": {"amount_due": "1280.00", "currency": "CNY", "due_date": "2026-12-01"},
        "contacts": {"phone": "+8613800000001"},
    }
    out.update(kw)
    return out


@pytest.fixture
async def api(
    broker: str, redis_server: str, aiohttp_client: ClientFactory
) -> AsyncIterator[tuple[TestClient[Any, Any], Harness]]:
    async with engine_harness(broker, redis_server) as h:
        settings = h.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
        app = create_api(
            settings,
            h.producer,
            h.redis,
            load_plans(),
            h.desk,
            [
                ("redis", redis_check(h.redis)),
            ],
        )
        yield await aiohttp_client(app), h


async def test_post_routes_and_get_shows_masked_state(
    api: tuple[TestClient[Any, Any], Harness], broker: str
) -> None:
    client, h = api
    t = h.settings.topics
    async with Reader(broker, t.dispatch("voice")) as r:
        resp = await client.post("/v1/notifications", json=body("api-1"), headers=AUTH)
        assert resp.status == 202
        assert await resp.json() == {"id": "api-1"}
        (voice,) = await r.take(t.dispatch("voice"))
        assert value(voice)["notification_id"] == "api-1"
    resp = await client.get("/v1/notifications/api-1", headers=AUTH)
    assert resp.status == 200
    state = await resp.json()
    assert state["status"] == "pending"
    assert state["current"]["channel"] == "voice"
    assert state["current"]["recipient"] == "+86138****0001"
    assert "+8613800000001" not in await resp.text()


async def test_same_id_twice_is_202_and_one_notification(
    api: tuple[TestClient[Any, Any], Harness], broker: str
) -> None:
    client, h = api
    t = h.settings.topics
    async with Reader(broker, t.dispatch("voice"), t.requested) as r:
        for _ in range(2):
            resp = await client.post("/v1/notifications", json=body("api-2"), headers=AUTH)
            assert resp.status == 202
        await r.take(t.requested, 2)
        await r.take(t.dispatch("voice"))
        await r.settle()
        assert len([m for m in r.seen if m.topic == t.dispatch("voice")]) == 1


@pytest.mark.parametrize(
    ("payload", "field", "error"),
    [
        (body("x", customer_id=None), "customer_id", "invalid_fields"),
        (
            {k: v for k, v in body("x").items() if k != "occurred_at"},
            "occurred_at",
            "invalid_fields",
        ),
        (body("x", priority="asap"), "priority", "invalid_fields"),
        (body("x", contacts={"phone": "12345"}), "contacts.phone", "invalid_fields"),
        (body("x", type="no_such_plan"), "type", "unknown_type"),
        (
            body("x", data={"amount_due": "1", "currency": "CNY"}),
            "data.due_date",
            "missing_variable",
        ),
        (body("x", schema="notification.requested/v9"), "schema", "unknown_schema_version"),
    ],
)
async def test_invalid_bodies_are_400_naming_the_field(
    api: tuple[TestClient[Any, Any], Harness], payload: dict[str, Any], field: str, error: str
) -> None:
    client, _ = api
    resp = await client.post("/v1/notifications", json=payload, headers=AUTH)
    assert resp.status == 400
    answer = await resp.json()
    assert (answer["error"], answer["field"]) == (error, field)


async def test_malformed_and_oversized_bodies(api: tuple[TestClient[Any, Any], Harness]) -> None:
    client, _ = api
    resp = await client.post("/v1/notifications", data=b"{nope", headers=AUTH)
    assert resp.status == 400 and (await resp.json())["error"] == "malformed_json"
    big = io.BytesIO(b"x" * (2 * 1024 * 1024))
    resp = await client.post("/v1/notifications", data=big, headers=AUTH)
    assert resp.status == 413
    assert "error" in await resp.json()


async def test_bearer_token_is_required_on_v1_only(
    api: tuple[TestClient[Any, Any], Harness],
) -> None:
    client, _ = api
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = await client.get("/v1/notifications/any", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthorized"
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"
    metrics = await client.get("/metrics")
    assert metrics.status == 200
    assert "tongda_http_requests_total" in await metrics.text()


async def test_unknown_notification_is_404(api: tuple[TestClient[Any, Any], Harness]) -> None:
    client, _ = api
    resp = await client.get("/v1/notifications/never-seen", headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"


async def test_timeline_is_newest_first(
    api: tuple[TestClient[Any, Any], Harness], broker: str
) -> None:
    client, h = api
    t = h.settings.topics
    resp = await client.post(
        "/v1/notifications",
        json=body("api-3", type="repayment_due", contacts={"email": "li@example.com"}),
        headers=AUTH,
    )
    assert resp.status == 202
    async with Reader(broker, t.dispatch("email")) as r:
        (email,) = await r.take(t.dispatch("email"))
        d = value(email)
        await h.publish(
            t.router_inbox,
            {
                "schema": "tongda.outcome/v1",
                "notification_id": "api-3",
                "customer_id": "api-c1",
                "channel": "email",
                "leg": d["leg"],
                "attempt": d["attempt"],
                "outcome": "delivered",
                "provider": "test",
                "at": datetime.now(UTC).isoformat(),
            },
            key="api-c1",
        )
    async with Reader(broker, t.status) as r:
        await r.take(t.status)
    resp = await client.get("/v1/customers/api-c1/timeline", headers=AUTH)
    assert resp.status == 200
    records = (await resp.json())["records"]
    assert [(x["channel"], x["outcome"]) for x in records] == [
        ("email", "delivered"),
        ("sms", "suppressed"),
        ("push", "suppressed"),
    ]
    assert records[0]["recipient"] == "l***@example.com"
    bad = await client.get("/v1/customers/api-c1/timeline?limit=0", headers=AUTH)
    assert bad.status == 400 and (await bad.json())["field"] == "limit"


async def test_put_preference_opts_out_and_is_published(
    api: tuple[TestClient[Any, Any], Harness], broker: str
) -> None:
    client, h = api
    t = h.settings.topics
    url = "/v1/customers/api-c9/preferences/sms"
    assert (await client.put(url, json={"state": "opted_out"})).status == 401
    bad = await client.put("/v1/customers/api-c9/preferences/fax", json={}, headers=AUTH)
    assert bad.status == 400 and (await bad.json())["field"] == "channel"
    bad = await client.put(url, json={"state": "maybe"}, headers=AUTH)
    assert bad.status == 400 and (await bad.json())["field"] == "state"
    bad = await client.put(url, data=b"{not json", headers=AUTH)
    assert bad.status == 400
    async with Reader(broker, t.preferences) as r:
        resp = await client.put(url, json={"state": "opted_out"}, headers=AUTH)
        assert resp.status == 200
        got = await resp.json()
        (pref,) = await r.take(t.preferences)
    assert value(pref) == got
    assert (got["customer_id"], got["channel"], got["state"], got["source"]) == (
        "api-c9",
        "sms",
        "opted_out",
        "api",
    )
    assert await h.redis.hget(h.store.keys.controls("api-c9"), "pref:sms")


async def test_get_inquiry_404_names_the_id(api: tuple[TestClient[Any, Any], Harness]) -> None:
    client, _ = api
    resp = await client.get("/v1/inquiries/nope", headers=AUTH)
    assert resp.status == 404
    err = await resp.json()
    assert err["error"] == "not_found" and "'nope'" in err["detail"]

"""The dashboards and rules answer with real data: a real Prometheus (tools/prometheus.py, the
project's rules) scrapes a full stack (broker, Redis, router, four channels) while it routes the
demo's scenarios, requests posted to the router's API, a borrower's inbound message and an
invalid event. Then every dashboard panel query, every recording rule and every series an alert
reads must return data, grouped by the labels the panel groups by, and `promtool check
metrics` must pass on every service's /metrics.

Series that this stack cannot produce in a short run are listed in NO_DATA_YET with the
reason (docs/operations.md, "Dashboards", lists them too); the test fails when one of them starts
answering (remove it from the list) as well as when anything else stops answering.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from tools import dashboards
from tools.demo import run_demo
from tools.devstack.base import HOST
from tools.devstack.net import http_get
from tools.devstack.stack import Stack
from tools.prometheus import PrometheusServer, rule_files, start_local
from tools.scenarios import LOAN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        shutil.which("prometheus") is None or shutil.which("promtool") is None,
        reason="prometheus / promtool not installed",
    ),
]

# What is expected to return nothing here, and why. Keys: a panel title, a recording rule
# (`record{slo=...}`), or a metric an alert reads.
NO_DATA_YET: dict[str, str] = {
    # every metric is observed by a service (tests/test_deploy_prometheus.py checks names and
    # labels offline); these are not produced by a sandbox stack in a one-minute run
    "Provider failovers": "the sandbox stack runs one provider per channel, no failover chain",
    "Provider circuit (0 closed, 1 half-open, 2 open)": "no failover chain, no circuit breaker",
    "respond_by misses by tier and intent": "the shortest respond_by is 15 minutes (urgent)",
    "CSAT: share of 4 and 5 scores, by intent": "no borrower answers a survey in the run",
    "CSAT scores received": "no borrower answers a survey in the run",
    "Duplicates and unmatched receipts": "no redelivery or stray receipt in a clean run",
    "Inbox events that changed nothing": "no duplicate outcome or stale timer in a clean run",
}


METRIC = r"\b(tongda[a-z0-9_:]*|up)\b(?=[{\[\s)])"  # a metric an expression reads


def rules() -> list[dict[str, Any]]:
    out = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def panels() -> Iterator[tuple[str, str]]:
    for path in sorted(dashboards.OUT_DIR.glob("*.json")):
        yield from dashboards.queries(json.loads(path.read_text()))


def grouping(expr: str) -> set[str]:
    """The labels of the outermost `by (...)` of a panel query (the legend's labels)."""
    match = re.search(r"by \(([^)]*)\)", expr)
    return {k.strip() for k in match.group(1).split(",")} - {"le"} if match else set()


async def post_notifications(stack: Stack, n: int) -> list[str]:
    """n requests through the router's API, urgent, high and normal; returns their ids."""
    ids = []
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for i in range(n):
            nid = f"live-{uuid.uuid4().hex[:12]}"
            body = {
                "id": nid,
                "type": "overdue_notice" if i % 2 else "repayment_due",
                "priority": ("urgent", "high", "normal")[i % 3],
                "customer_id": f"live-c{i}",
                "occurred_at": datetime.now(UTC).isoformat(),
                "contacts": {"phone": f"+86138000{i:05d}", "email": f"live{i}@example.com"},
                "data": LOAN,
            }
            async with http.post(f"{stack.router_url}/v1/notifications", json=body) as resp:
                assert resp.status in (200, 201, 202), await resp.text()
            ids.append(nid)
        # a borrower writes back (the sandbox's inbound webhook → inquiry.received/v1)
        sms = stack.service("sms").url
        inbound = {"from": "+8613800000001", "text": "I lost my job, can I pay next month?"}
        async with http.post(f"{sms}/sandbox/inbound", json=inbound) as resp:
            assert resp.status in (200, 202), await resp.text()
    return ids


async def publish_invalid(stack: Stack) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        topic = stack.settings().topics.requested
        await producer.send_and_wait(topic, b"{not json", key=b"live-invalid")
    finally:
        await producer.stop()


async def until(prom: PrometheusServer, expr: str, timeout_s: float = 60.0) -> None:
    """Poll Prometheus (it has no push) until `expr` returns something."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(prom.query, expr):
        assert time.monotonic() < deadline, f"no data for {expr} after {timeout_s:.0f} s"
        await asyncio.sleep(0.5)


def check_metrics(port: int) -> subprocess.CompletedProcess[str]:
    status, body = http_get(HOST, port, "/metrics")
    assert status == 200
    return subprocess.run(
        ["promtool", "check", "metrics"],
        input=body.decode(),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


async def test_every_panel_and_rule_answers_from_a_stack_under_load(
    stack: Stack, tmp_path: Path
) -> None:
    ports = {name: svc.port for name, svc in stack.services.items()}
    prom = start_local(tmp_path, ports, scrape_interval_s=1)
    try:
        await until(prom, 'count(up{service=~"tongda-.+"} == 1) == 5', 30)
        ids = await post_notifications(stack, 9)
        await publish_invalid(stack)
        demo = await run_demo(stack.bootstrap, say=None, deadline_s=30, linger_s=0.5)
        assert sum(1 for n in demo.notifications if n.statuses) >= 5
        # the demo's notifications are final (the API's wait for the borrower's daytime: no
        # profile, so quiet hours may defer them), scraped and through the rules
        await until(prom, "sum(tongda_notifications_final_total) >= 5")
        await until(prom, f"sum(tongda_events_consumed_total) >= {len(ids)}")
        await until(prom, 'tongda:slo_errors:ratio_rate5m{slo="deadletters"}')
        await until(prom, "sum(tongda_inbound_messages_total) > 0")
        await asyncio.sleep(2)  # two more scrapes and rule evaluations

        empty: dict[str, str] = {}
        for title, expr in panels():
            result = await asyncio.to_thread(prom.query, dashboards.concrete(expr))
            want = grouping(expr)
            if not result:
                empty[title] = "no data"
            elif not all(want <= set(r["metric"]) for r in result):
                empty[title] = f"series lack {sorted(want)}"
        for rule in rules():
            if "record" in rule:
                slo = rule.get("labels", {}).get("slo")
                key = f"slo={slo}" if slo else rule["record"]
                selector = f'{rule["record"]}{{slo="{slo}"}}' if slo else rule["record"]
                if not await asyncio.to_thread(prom.query, selector):
                    empty[key] = "no data"
        present = await asyncio.to_thread(prom.metric_names)
        for rule in rules():
            if "alert" in rule:
                for name in set(re.findall(METRIC, rule["expr"])):
                    if name not in present:
                        empty[name] = f"read by {rule['alert']}, absent"

        unexpected = {k: v for k, v in empty.items() if k not in NO_DATA_YET}
        landed = sorted(set(NO_DATA_YET) - set(empty))
        assert not unexpected, f"no data where data is expected: {unexpected}"
        assert not landed, f"these answer now: remove them from NO_DATA_YET: {landed}"

        # every service reports Redis reachable and its lag per topic it consumes
        services = {f"tongda-{name}" for name in stack.services}
        up = await asyncio.to_thread(prom.query, "tongda_redis_up == 1")
        assert {r["metric"]["service"] for r in up} == services
        lag = await asyncio.to_thread(prom.query, "tongda_consumer_lag_records")
        topics = {(r["metric"]["service"], r["metric"]["topic"]) for r in lag}
        assert {s for s, _ in topics} == services
        t = stack.settings().topics
        assert {t.requested, t.router_inbox, t.inquiries} <= {
            topic for s, topic in topics if s == "tongda-router"
        }
        ops = await asyncio.to_thread(
            prom.query, 'tongda_redis_command_seconds_count{service="tongda-router"} > 0'
        )
        assert {"apply", "read", "claim"} <= {r["metric"]["operation"] for r in ops}

        for name, svc in stack.services.items():
            result = await asyncio.to_thread(check_metrics, svc.port)
            assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
    finally:
        prom.stop_sync()

"""The router's metrics for an applied transition (attempts, fallbacks, rule verdicts, final
statuses and their durations). Labels carry no customer data."""

from __future__ import annotations

from functools import cache
from zoneinfo import ZoneInfo

from services.router.packing import Pending
from shared.metrics import (
    ATTEMPTS,
    FALLBACKS,
    NOTIFICATION_SECONDS,
    NOTIFICATIONS_FINAL,
    POLICY_DECISIONS,
    VOICE_OUTCOMES_BY_HOUR,
)


def observe(p: Pending) -> None:
    fx = p.effects
    for r in fx.records:
        if r.outcome is not None and r.channel is not None and r.outcome != "deferred":
            ATTEMPTS.labels(channel=r.channel, outcome=r.outcome).inc()
    for left, tried, reason in fx.fallbacks:
        FALLBACKS.labels(from_channel=left, to_channel=tried, reason=reason).inc()
    for verdict, rule, channel in fx.decisions:
        POLICY_DECISIONS.labels(verdict=verdict, rule=rule, channel=channel).inc()
    voice = [r for r in fx.records if r.channel == "voice" and r.outcome not in (None, "deferred")]
    if voice:
        tz = _zone(p.state.policy.timezone or "Asia/Shanghai")
        for r in voice:
            hour = str(r.at.astimezone(tz).hour)
            VOICE_OUTCOMES_BY_HOUR.labels(outcome=r.outcome, hour=hour).inc()
    final = fx.final
    if final is not None:
        priority = p.state.priority
        NOTIFICATIONS_FINAL.labels(type=final.type, priority=priority, status=final.status).inc()
        NOTIFICATION_SECONDS.labels(
            type=final.type, priority=priority, status=final.status
        ).observe(max(0.0, (final.completed_at - p.state.occurred_at).total_seconds()))


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)

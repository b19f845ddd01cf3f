"""The router's metrics for an applied transition (attempts, fallbacks, rule verdicts, final
statuses and their durations). Labels carry no customer data."""

from __future__ import annotations

from services.router.packing import Pending
from shared.metrics import (
    ATTEMPTS,
    FALLBACKS,
    NOTIFICATION_SECONDS,
    NOTIFICATIONS_FINAL,
    POLICY_DECISIONS,
)


def observe(p: Pending) -> None:
    fx = p.effects
    for r in fx.records:
        if r.outcome is not None and r.channel is not None and r.outcome != "deferred":
            ATTEMPTS.labels(channel=r.channel, outcome=r.outcome).inc()
    for channel, reason in fx.fallbacks:
        FALLBACKS.labels(channel=channel, reason=reason).inc()
    for verdict, rule, channel in fx.decisions:
        POLICY_DECISIONS.labels(verdict=verdict, rule=rule, channel=channel).inc()
    final = fx.final
    if final is not None:
        NOTIFICATIONS_FINAL.labels(type=final.type, status=final.status).inc()
        NOTIFICATION_SECONDS.labels(type=final.type, status=final.status).observe(
            max(0.0, (final.completed_at - p.state.occurred_at).total_seconds())
        )

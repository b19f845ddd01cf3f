"""Prometheus metrics shared by every service. Labels never carry customer data."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Time to a final status: the SLOs read the 300 s (urgent, high) and 3600 s (normal) buckets.
NOTIFICATION_BUCKETS = (*LATENCY_BUCKETS, 600, 1800, 3600, 7200, 21600, 86400)

EVENTS_CONSUMED = Counter(
    "tongda_events_consumed_total",
    "Kafka records consumed, by service and topic.",
    ["service", "topic"],
)
DEADLETTERS = Counter(
    "tongda_deadletters_total",
    "Records sent to the dead-letter topic, by service and error code.",
    ["service", "error"],
)
BATCH_SECONDS = Histogram(
    "tongda_batch_duration_seconds",
    "Time to process one consumed batch end to end (state, produce, commit).",
    ["service"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "tongda_batch_size_records",
    "Records per consumed batch.",
    ["service"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
NOTIFICATIONS_FINAL = Counter(
    "tongda_notifications_final_total",
    "Notifications that reached a final status, by type, priority and status.",
    ["type", "priority", "status"],
)
NOTIFICATION_SECONDS = Histogram(
    "tongda_notification_duration_seconds",
    "From occurred_at to final status, by type, priority and status.",
    ["type", "priority", "status"],
    buckets=NOTIFICATION_BUCKETS,
)
ATTEMPTS = Counter(
    "tongda_attempts_total",
    "Attempt outcomes seen by the router, by channel and outcome.",
    ["channel", "outcome"],
)
FALLBACKS = Counter(
    "tongda_fallbacks_total",
    "Moves from one leg of a plan to the next, by the channel left, the channel tried next "
    "(none: the plan was exhausted) and the reason.",
    ["from_channel", "to_channel", "reason"],
)
DISPATCH_SECONDS = Histogram(
    "tongda_dispatch_latency_seconds",
    "From the router's dispatch to the channel service taking the attempt, by channel.",
    ["channel"],
    buckets=LATENCY_BUCKETS,
)
PROVIDER_SENDS = Counter(
    "tongda_provider_sends_total",
    "Attempts handed to a provider, by channel and provider.",
    ["channel", "provider"],
)
PROVIDER_OUTCOMES = Counter(
    "tongda_provider_outcomes_total",
    "Canonical outcomes reported by providers, by channel and outcome.",
    ["channel", "outcome"],
)
PROVIDER_SECONDS = Histogram(
    "tongda_provider_outcome_seconds",
    "From handing an attempt to the provider to its outcome, by channel and provider.",
    ["channel", "provider"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "tongda_attempts_in_flight",
    "Attempts handed to a provider and waiting for their outcome, by channel.",
    ["channel"],
)
DUPLICATE_DISPATCHES = Counter(
    "tongda_duplicate_dispatches_total",
    "Dispatches not handed to the provider because that attempt was already handed over.",
    ["channel"],
)
UNMATCHED_RECEIPTS = Counter(
    "tongda_unmatched_receipts_total",
    "Provider receipts matching no known attempt (already reported, or forgotten).",
    ["channel", "provider"],
)
TIMERS_DUE = Counter(
    "tongda_timers_fired_total",
    "Scheduled work that came due, by kind.",
    ["kind"],
)
HTTP_REQUESTS = Counter(
    "tongda_http_requests_total",
    "HTTP requests, by route and status code.",
    ["route", "code"],
)
STALE_EVENTS = Counter(
    "tongda_stale_events_total",
    "Inbox events that changed nothing (duplicate outcome, timer for a step already left).",
    ["reason"],
)
INBOUND_MESSAGES = Counter(
    "tongda_inbound_messages_total",
    "Inbound borrower messages published as inquiries, by channel and provider.",
    ["channel", "provider"],
)
POLICY_DECISIONS = Counter(
    "tongda_policy_decisions_total",
    "Contact-rule verdicts that were not 'send now', by verdict, rule and channel.",
    ["verdict", "rule", "channel"],
)
INQUIRIES = Counter(
    "tongda_inquiries_total",
    "Inquiries classified by the router, by intent and tier.",
    ["intent", "tier"],
)
INQUIRY_ESCALATIONS = Counter(
    "tongda_inquiry_escalations_total",
    "Escalations published, by tier and level (2 = respond_by passed).",
    ["tier", "level"],
)
INQUIRY_SLA_MISSES = Counter(
    "tongda_inquiry_sla_misses_total",
    "Inquiries whose respond_by passed without inquiry.resolved/v1, by tier and intent.",
    ["tier", "intent"],
)
CSAT_SCORES = Counter(
    "tongda_csat_scores_total",
    "Satisfaction scores (1-5) received after a resolved inquiry, by intent, tier and score.",
    ["intent", "tier", "score"],
)
LOOP_STALLED = Gauge(
    "tongda_consume_loop_stalled",
    "1 while a service's consume loop has not completed a batch for its stall limit while "
    "records wait, else 0.",
    ["service"],
)
GROUP_STUCK = Gauge(
    "tongda_consumer_group_stuck",
    "1 while a consumer has waited longer than its limit for its group to assign it "
    "partitions (a rebalance that does not complete), else 0.",
    ["service", "group"],
)
PROVIDER_CIRCUIT_STATE = Gauge(
    "tongda_provider_circuit_state",
    "A failover provider's circuit breaker: 0 closed, 1 half-open, 2 open.",
    ["channel", "provider"],
)
PROVIDER_FAILOVERS = Counter(
    "tongda_provider_failovers_total",
    "Sends that moved from one provider to the next (failure, error or open circuit).",
    ["channel", "from_provider", "to_provider"],
)
PROVIDER_THROTTLED = Counter(
    "tongda_provider_throttled_total",
    "Times a provider told us to slow down (SMPP ESME_RTHROTTLED / ESME_RMSGQFUL).",
    ["channel", "provider"],
)
PROVIDER_SESSIONS = Gauge(
    "tongda_provider_sessions_bound",
    "Provider sessions currently bound (SMPP transceivers).",
    ["channel", "provider"],
)
# --- operations (deploy/prometheus rules, deploy/grafana dashboards) -------------------------
OFFSET_GAPS = Counter(
    "tongda_consumer_offset_gaps_total",
    "Offsets a fetch skipped on a topic where every offset holds a record, by service, topic "
    "and what was done: refetched (held back and read again) or skipped (still missing after "
    "kafka_offset_gap_wait_s; should never happen on Apache Kafka).",
    ["service", "topic", "outcome"],
)
CONSUMER_LAG = Gauge(
    "tongda_consumer_lag_records",
    "Records not yet fetched on this process's assigned partitions of a topic (high-water mark "
    "- position, summed over the partitions).",
    ["service", "topic"],
)
# The fixed values of REDIS_SECONDS' `operation` label (shared/redis.py, RedisMeter).
REDIS_OPERATIONS = ("apply", "read", "ledger", "write", "outbox", "claim", "heartbeat", "ping")
REDIS_SECONDS = Histogram(
    "tongda_redis_command_seconds",
    "Redis round trips (a command, a pipeline or a Lua script call), by service and operation "
    "(" + ", ".join(REDIS_OPERATIONS) + ").",
    ["service", "operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REDIS_UP = Gauge(
    "tongda_redis_up",
    "1 while the last Redis call or ping succeeded, 0 after a connection error or timeout.",
    ["service"],
)
VOICE_OUTCOMES_BY_HOUR = Counter(
    "tongda_voice_outcomes_by_local_hour_total",
    "Voice attempt outcomes by the borrower's local hour of the call (0-23).",
    ["outcome", "hour"],
)
WEBHOOK_CALLBACKS = Counter(
    "tongda_webhook_callbacks_total",
    "Provider webhook requests, by provider, route and result (handled, replay, "
    "bad_signature, rate_limited).",
    ["provider", "route", "result"],
)

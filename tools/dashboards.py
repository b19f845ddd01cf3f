"""The Grafana dashboards, as code: deploy/grafana/dashboards/*.json is what this writes.

    python -m tools.dashboards           # (re)write the JSON files
    python -m tools.dashboards --check   # exit 1 if a committed file differs from the code

Built with grafana-foundation-sdk (Grafana 11.6 schema). Every dashboard has a `datasource`
variable (any Prometheus) and `namespace` / `service` variables; every query filters on them.
The metrics are those of shared/metrics.py; docs/operations.md describes the dashboards.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prom_model

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "deploy" / "grafana" / "dashboards"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
# Every query's label filter: the dashboard's namespace and service variables.
F = 'namespace=~"$namespace", service=~"$service"'


def sel(metric: str, extra: str = "") -> str:
    """`metric{<the variables' filter>, extra}`."""
    return f"{metric}{{{F}{', ' + extra if extra else ''}}}"


def rate(metric: str, extra: str = "", window: str = RATE) -> str:
    return f"rate({sel(metric, extra)}[{window}])"


def quantile(q: float, histogram: str, by: str = "", extra: str = "") -> str:
    """histogram_quantile(q, ...) over `histogram`_bucket, grouped by `by` (and le)."""
    keys = ", ".join(k for k in (by, "le") if k)
    return f"histogram_quantile({q}, sum by ({keys}) ({rate(histogram + '_bucket', extra)}))"


def target(expr: str, legend: str = "", ref: str = "A") -> prom.Dataquery:
    query = prom.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    return query.legend_format(legend) if legend else query


@dataclass
class Board:
    """One dashboard being assembled: rows of panels, ids and positions handed out in order."""

    uid: str
    title: str
    description: str
    builder: dash.Dashboard = field(init=False)
    next_id: int = 1

    def __post_init__(self) -> None:
        self.builder = (
            dash.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags(["tongda"])
            .timezone("browser")
            .refresh("30s")
            .time("now-6h", "now")
            .editable()
            .with_variable(
                dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
            )
            .with_variable(
                variable("namespace", 'label_values(up{service=~"tongda-.+"}, namespace)')
            )
            .with_variable(
                variable(
                    "service",
                    'label_values(up{namespace=~"$namespace", service=~"tongda-.+"}, service)',
                )
            )
        )

    def row(self, title: str) -> Board:
        self.builder.with_row(dash.Row(title).id(self._id()))
        return self

    def panel(self, panel: Any, width: int = 12, height: int = 8) -> Board:
        panel.id(self._id()).datasource(DATASOURCE).grid_pos(model.GridPos(h=height, w=width))
        self.builder.with_panel(panel)
        return self

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def json(self) -> str:
        return json.dumps(self.builder.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def variable(name: str, query: str) -> dash.QueryVariable:
    return (
        dash.QueryVariable(name)
        .label(name.capitalize())
        .datasource(DATASOURCE)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def series(
    title: str, targets: Sequence[prom.Dataquery], unit: str = "short", description: str = ""
) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).fill_opacity(10).line_width(1)
    if description:
        panel.description(description)
    for t in targets:
        panel.with_target(t)
    return panel


def one(title: str, expr: str, legend: str, unit: str = "short", description: str = "") -> Any:
    return series(title, [target(expr, legend)], unit, description)


def ratio_stat(title: str, expr: str, description: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .unit("percentunit")
        .decimals(2)
        .with_target(target(expr, "{{namespace}}"))
    )


# --- the dashboards -------------------------------------------------------------------------

URGENT = 'priority=~"urgent|high"'
NOT_REACHED = 'outcome=~"busy|no_answer"'
FAILED = 'outcome="failed"'
SATISFIED = 'score=~"4|5"'


def within(priority: str, le: str, by: str) -> str:
    """Share of notifications of `priority` final within `le` seconds, by `by`."""
    bucket = rate("tongda_notification_duration_seconds_bucket", f'{priority}, le="{le}"')
    count = rate("tongda_notification_duration_seconds_count", priority)
    return f"sum by ({by}) ({bucket})\n/\nsum by ({by}) ({count})"


def sla_overview() -> Board:
    b = Board(
        "tongda-sla",
        "tongda / SLA overview",
        "Are borrowers told in time? Within-SLA ratios, time to a final status, fallbacks, "
        "calls that found nobody, and what the contact rules held back.",
    )
    b.row("Service level objectives")
    b.panel(
        ratio_stat(
            "Urgent and high: final within 5 min",
            within(URGENT, "300.0", "namespace"),
            "SLO 99%. Share of urgent and high notifications whose final status came within "
            "5 minutes of occurred_at.",
        ),
        width=6,
        height=5,
    )
    b.panel(
        ratio_stat(
            "Normal: final within 1 h",
            within('priority="normal"', "3600.0", "namespace"),
            "SLO 95%. Share of normal notifications final within an hour of occurred_at.",
        ),
        width=6,
        height=5,
    )
    b.panel(
        one(
            "Error-budget burn rate (1h window)",
            'tongda:slo_errors:ratio_rate1h{namespace=~"$namespace"}',
            "{{slo}}",
            "percentunit",
            "Error ratio of each SLO over the last hour (recording rules of "
            "deploy/prometheus). Pages at 14.4x the budget: 14.4% for a 99% SLO.",
        ),
        width=12,
        height=5,
    )
    b.panel(
        one(
            "Urgent and high within 5 min, by type and priority",
            within(URGENT, "300.0", "type, priority"),
            "{{type}} {{priority}}",
            "percentunit",
        )
    )
    b.panel(
        one(
            "Normal within 1 h, by type",
            within('priority="normal"', "3600.0", "type, priority"),
            "{{type}} {{priority}}",
            "percentunit",
        )
    )
    b.row("Time to a final status")
    b.panel(
        series(
            "Time from occurred_at to delivered",
            [
                target(
                    quantile(q, "tongda_notification_duration_seconds", extra='status="delivered"'),
                    f"p{round(q * 100)}",
                    ref,
                )
                for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
            ],
            "s",
        )
    )
    b.panel(
        one(
            "p95 time to a final status, by type",
            quantile(0.95, "tongda_notification_duration_seconds", "type"),
            "{{type}}",
            "s",
        )
    )
    b.panel(
        one(
            "Final statuses per second, by type",
            f"sum by (type, status) ({rate('tongda_notifications_final_total')})",
            "{{type}} {{status}}",
            "ops",
        )
    )
    b.panel(
        one(
            "Fallbacks by channel left → next channel",
            f"sum by (from_channel, to_channel) ({rate('tongda_fallbacks_total')})",
            "{{from_channel}} → {{to_channel}}",
            "ops",
            "Moves from one leg of a plan to the next. `to_channel` is the channel tried next "
            "(none: the plan was exhausted).",
        )
    )
    b.panel(
        one(
            "Fallback reasons",
            f"sum by (from_channel, reason) ({rate('tongda_fallbacks_total')})",
            "{{from_channel}}: {{reason}}",
            "ops",
        )
    )
    b.row("Calls and contact rules")
    hour = "tongda_voice_outcomes_by_local_hour_total"
    b.panel(
        bargauge.Panel()
        .title("Voice busy / no answer rate by borrower's local hour")
        .description("Share of voice outcomes that were busy or no_answer, over the range.")
        .unit("percentunit")
        .min(0)
        .max(1)
        .with_target(
            target(
                f"sum by (hour) (increase({sel(hour, NOT_REACHED)}[$__range]))\n/\n"
                f"sum by (hour) (increase({sel(hour)}[$__range]))",
                "{{hour}}:00",
            ).instant()
        ),
        width=24,
        height=7,
    )
    b.panel(
        one(
            "Deferrals and suppressions by rule",
            f"sum by (verdict, rule, channel) ({rate('tongda_policy_decisions_total')})",
            "{{verdict}} {{rule}} ({{channel}})",
            "ops",
            "Contact-rule verdicts other than 'send now' (quiet hours, frequency caps, "
            "consent, no address).",
        ),
        width=24,
    )
    return b


def channels() -> Board:
    b = Board(
        "tongda-channels",
        "tongda / channels",
        "Per channel: what was handed to providers, what came back, how long it took, and "
        "provider errors.",
    )
    b.row("Attempts and outcomes")
    b.panel(
        one(
            "Attempts handed to providers",
            f"sum by (channel, provider) ({rate('tongda_provider_sends_total')})",
            "{{channel}} {{provider}}",
            "ops",
        )
    )
    b.panel(
        one(
            "Provider outcomes",
            f"sum by (channel, outcome) ({rate('tongda_provider_outcomes_total')})",
            "{{channel}} {{outcome}}",
            "ops",
        )
    )
    b.panel(
        one(
            "Attempt outcomes seen by the router",
            f"sum by (channel, outcome) ({rate('tongda_attempts_total')})",
            "{{channel}} {{outcome}}",
            "ops",
        )
    )
    b.panel(
        one(
            "Attempts waiting for a receipt",
            f"sum by (channel) ({sel('tongda_attempts_in_flight')})",
            "{{channel}}",
        )
    )
    b.row("Latency")
    b.panel(
        series(
            "Provider latency (hand-over → outcome)",
            [
                target(
                    quantile(q, "tongda_provider_outcome_seconds", "channel, provider"),
                    f"{{{{channel}}}} {{{{provider}}}} p{round(q * 100)}",
                    ref,
                )
                for q, ref in ((0.5, "A"), (0.95, "B"))
            ],
            "s",
        )
    )
    b.panel(
        one(
            "Dispatch latency p95 (router → channel service)",
            quantile(0.95, "tongda_dispatch_latency_seconds", "channel"),
            "{{channel}}",
            "s",
        )
    )
    b.row("Errors")
    b.panel(
        one(
            "Provider error ratio (outcome failed)",
            f"sum by (channel) ({rate('tongda_provider_outcomes_total', FAILED)})\n/\n"
            f"sum by (channel) ({rate('tongda_provider_outcomes_total')})",
            "{{channel}}",
            "percentunit",
            "Alerts above 10% over 5 minutes and 1 hour (TongdaProviderErrorRatioHigh).",
        )
    )
    b.panel(
        series(
            "Duplicates and unmatched receipts",
            [
                target(
                    f"sum by (channel) ({rate('tongda_duplicate_dispatches_total')})",
                    "{{channel}} duplicate dispatch",
                    "A",
                ),
                target(
                    f"sum by (channel) ({rate('tongda_unmatched_receipts_total')})",
                    "{{channel}} unmatched receipt",
                    "B",
                ),
            ],
            "ops",
        )
    )
    b.panel(
        one(
            "Provider failovers",
            "sum by (channel, from_provider, to_provider) "
            f"({rate('tongda_provider_failovers_total')})",
            "{{channel}} {{from_provider}} → {{to_provider}}",
            "ops",
        )
    )
    b.panel(
        one(
            "Provider circuit (0 closed, 1 half-open, 2 open)",
            f"max by (channel, provider) ({sel('tongda_provider_circuit_state')})",
            "{{channel}} {{provider}}",
        )
    )
    return b


def inquiries() -> Board:
    b = Board(
        "tongda-inquiries",
        "tongda / inquiries",
        "Borrowers' inbound messages: volume by tier and intent, respond_by misses, "
        "escalations and satisfaction.",
    )
    b.row("Volume")
    b.panel(
        one(
            "Inquiries by tier and intent",
            f"sum by (tier, intent) ({rate('tongda_inquiries_total')})",
            "{{tier}} {{intent}}",
            "ops",
        )
    )
    b.panel(
        one(
            "Inbound messages by channel",
            f"sum by (channel, provider) ({rate('tongda_inbound_messages_total')})",
            "{{channel}} {{provider}}",
            "ops",
        )
    )
    b.row("Service level")
    b.panel(
        one(
            "respond_by misses by tier and intent",
            f"sum by (tier, intent) ({rate('tongda_inquiry_sla_misses_total')})",
            "{{tier}} {{intent}}",
            "ops",
            "Inquiries whose respond_by passed without inquiry.resolved/v1 (SLO: 99% "
            "answered in time).",
        )
    )
    b.panel(
        one(
            "Escalations by tier and level",
            f"sum by (tier, level) ({rate('tongda_inquiry_escalations_total')})",
            "{{tier}} level {{level}}",
            "ops",
        )
    )
    b.row("Satisfaction")
    csat = "tongda_csat_scores_total"
    b.panel(
        table.Panel()
        .title("CSAT: share of 4 and 5 scores, by intent")
        .unit("percentunit")
        .with_target(
            target(
                f"sum by (intent) (increase({sel(csat, SATISFIED)}[$__range]))\n/\n"
                f"sum by (intent) (increase({sel(csat)}[$__range]))",
                "{{intent}}",
            )
            .instant()
            .format(prom_model.PromQueryFormat.TABLE)
        )
    )
    b.panel(
        one(
            "CSAT scores received",
            f"sum by (score) ({rate(csat)})",
            "score {{score}}",
            "ops",
        )
    )
    return b


def internals() -> Board:
    b = Board(
        "tongda-internals",
        "tongda / service internals",
        "Batches, consumer lag, Redis, garbage collection, HTTP and dead letters, per service.",
    )
    b.row("Consume loops")
    b.panel(
        one(
            "Consumer lag (records)",
            f"sum by (service, topic) ({sel('tongda_consumer_lag_records')})",
            "{{service}} {{topic}}",
            description="Records not yet fetched, summed over the pods. Alerts when a "
            "service's total is above 1000 and growing for 10 minutes.",
        )
    )
    b.panel(
        one(
            "Records consumed per second",
            f"sum by (service, topic) ({rate('tongda_events_consumed_total')})",
            "{{service}} {{topic}}",
            "ops",
        )
    )
    b.panel(
        one(
            "Batch size p95",
            quantile(0.95, "tongda_batch_size_records", "service"),
            "{{service}}",
        )
    )
    b.panel(
        one(
            "Batch duration p99",
            quantile(0.99, "tongda_batch_duration_seconds", "service"),
            "{{service}}",
            "s",
        )
    )
    b.panel(
        one(
            "Stalled consume loops",
            f"max by (service) ({sel('tongda_consume_loop_stalled')})",
            "{{service}}",
        )
    )
    b.panel(
        one(
            "Offsets the broker skipped",
            f"sum by (service, topic, outcome) ({rate('tongda_consumer_offset_gaps_total')})",
            "{{service}} {{topic}} {{outcome}}",
            "ops",
            description="refetched: a fetch jumped past an offset of one of tongda's own "
            "topics and the consumer read it again (Tansu 0.6 does this; Apache Kafka never "
            "should); skipped: still missing after the wait, left behind (alert "
            "TongdaOffsetsSkipped).",
        )
    )
    b.panel(
        one(
            "Dead letters by error",
            f"sum by (service, error) ({rate('tongda_deadletters_total')})",
            "{{service}} {{error}}",
            "ops",
        )
    )
    b.row("Redis")
    b.panel(
        one(
            "Redis round trip p99",
            quantile(0.99, "tongda_redis_command_seconds", "service, operation"),
            "{{service}} {{operation}}",
            "s",
        )
    )
    b.panel(
        one("Redis reachable", f"min by (service) ({sel('tongda_redis_up')})", "{{service}}")
    )
    b.row("Process")
    b.panel(
        one(
            "GC collections per second, by generation",
            f"sum by (service, generation) ({rate('python_gc_collections_total')})",
            "{{service}} gen {{generation}}",
            "ops",
        )
    )
    b.panel(
        one(
            "Resident memory",
            f"sum by (service) ({sel('process_resident_memory_bytes')})",
            "{{service}}",
            "bytes",
        )
    )
    b.panel(
        one(
            "CPU",
            f"sum by (service) ({rate('process_cpu_seconds_total')})",
            "{{service}}",
            "percentunit",
        )
    )
    b.panel(
        one(
            "HTTP requests by route and code",
            f"sum by (service, route, code) ({rate('tongda_http_requests_total')})",
            "{{service}} {{route}} {{code}}",
            "reqps",
        )
    )
    b.panel(
        one(
            "Timers fired by kind",
            f"sum by (kind) ({rate('tongda_timers_fired_total')})",
            "{{kind}}",
            "ops",
        )
    )
    b.panel(
        one(
            "Inbox events that changed nothing",
            f"sum by (reason) ({rate('tongda_stale_events_total')})",
            "{{reason}}",
            "ops",
        )
    )
    return b


BOARDS = (sla_overview, channels, inquiries, internals)


def rendered() -> dict[Path, str]:
    """{path: JSON text} for every dashboard."""
    out = {}
    for make in BOARDS:
        board = make()
        out[OUT_DIR / f"{board.uid}.json"] = board.json()
    return out


def queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every panel target of a dashboard's JSON."""
    for panel in board.get("panels", []):
        for sub in (panel, *panel.get("panels", [])):
            for t in sub.get("targets", []):
                yield sub.get("title", ""), t["expr"]


def concrete(
    expr: str,
    namespace: str = ".*",
    service: str = ".*",
    rate_interval: str = "1m",
    range_: str = "5m",
) -> str:
    """`expr` with Grafana's variables replaced, ready for Prometheus' /api/v1/query."""
    return (
        expr.replace("$namespace", namespace)
        .replace("$service", service)
        .replace("$__rate_interval", rate_interval)
        .replace("$__range", range_)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dashboards", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    files = rendered()
    if args.check:
        present = set(OUT_DIR.glob("*.json"))
        stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
        extra = sorted(present - set(files))
        for path in [*stale, *extra]:
            print(f"out of date: {path.relative_to(REPO_ROOT)}", file=sys.stderr)
        if stale or extra:
            print("run: python -m tools.dashboards", file=sys.stderr)
            return 1
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

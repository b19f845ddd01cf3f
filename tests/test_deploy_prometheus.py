"""deploy/prometheus and deploy/grafana: the rules pass promtool's checks and unit tests, every
alert has a fixture that fires it and one that does not, the committed dashboards are what
tools/dashboards.py generates, and a real Prometheus parses every rule and panel query.
(tests/test_deploy_live.py runs them against a stack under load.)"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from tools import dashboards
from tools.prometheus import (
    RULES_DIR,
    PrometheusServer,
    PromQLError,
    rule_files,
    start_local,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.test.yml"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not installed"
)


def rules() -> list[dict[str, Any]]:
    out = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def alert_names() -> set[str]:
    return {r["alert"] for r in rules() if "alert" in r}


def dashboard_files() -> list[Path]:
    return sorted(dashboards.OUT_DIR.glob("*.json"))


def panel_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every panel target and query variable."""
    for path in dashboard_files():
        board = json.loads(path.read_text())
        for title, expr in dashboards.queries(board):
            yield path.name, title, expr
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                # label_values(selector, label) → the selector is the query it runs
                inner = var["query"].removeprefix("label_values(").rsplit(",", 1)[0]
                yield path.name, f"${var['name']}", inner


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, check=False, timeout=60, cwd=ROOT
    )


# --- rules ------------------------------------------------------------------------------------


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    files = rule_files()
    assert files
    result = promtool("check", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_notices_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests can fail: a fixture expecting the wrong severity is refused."""
    source = (ROOT / "deploy" / "prometheus" / "tests" / "operations.test.yml").read_text()
    broken = source.replace(
        "{namespace: tongda, service: tongda-sms, severity: page}",
        "{namespace: tongda, service: tongda-sms, severity: ticket}",
        1,
    )
    assert broken != source
    path = tmp_path / "broken.test.yml"
    path.write_text(broken.replace("../rules/", f"{RULES_DIR}/"))
    result = promtool("test", "rules", str(path))
    assert result.returncode != 0
    assert "TongdaConsumerLagGrowing" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_fixture() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = alert_names()
    assert len(names) >= 12
    assert names - firing == set(), "alerts never seen firing"
    assert names - quiet == set(), "alerts never seen quiet"


def test_every_alert_is_routable_and_documented() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    for rule in rules():
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        runbook = rule["annotations"]["runbook"]
        doc, _, anchor = runbook.partition("#")
        assert doc == "docs/operations.md", rule["alert"]
        assert f'<a id="{anchor}"></a>' in operations, f"{rule['alert']}: no anchor {anchor}"


def test_burn_rate_alerts_pair_a_long_and_a_short_window() -> None:
    """SRE-workbook style: never a single threshold on one window."""
    burn = [r for r in rules() if r.get("alert", "").endswith(("BurnFast", "BurnSlow"))]
    assert len(burn) == 8
    pairs = {"BurnFast": ("1h", "5m", "6h", "30m"), "BurnSlow": ("1d", "2h", "3d", "6h")}
    for rule in burn:
        speed = rule["alert"][-8:]
        for window in pairs[speed]:
            assert f"ratio_rate{window}{{" in rule["expr"], (rule["alert"], window)
        assert rule["expr"].count(" and ") == 2 and rule["expr"].count("or ") == 1


def exposition_of_every_metric() -> str:
    """shared/metrics.py's metrics re-declared in a private registry with one sample each
    (promtool lints samples: a family with none passes whatever its name)."""
    import shared.metrics as defined

    registry = CollectorRegistry()
    count = 0
    for metric in vars(defined).values():
        if not isinstance(metric, Counter | Gauge | Histogram):
            continue
        name = metric._name  # the name without the _total a Counter adds
        kwargs: dict[str, Any] = {"labelnames": metric._labelnames, "registry": registry}
        if isinstance(metric, Histogram):
            kwargs["buckets"] = metric._upper_bounds
        copy = type(metric)(name, metric._documentation, **kwargs)
        child = copy.labels(*["x"] * len(metric._labelnames)) if metric._labelnames else copy
        if isinstance(child, Histogram):
            child.observe(1)
        elif isinstance(child, Counter):
            child.inc()
        else:
            child.set(1)
        count += 1
    assert count >= 30
    return generate_latest(registry).decode()


def check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


@needs_promtool
def test_every_defined_metric_passes_promtool_check_metrics() -> None:
    """Every metric of shared/metrics.py follows Prometheus' naming rules (units, _total);
    tests/test_deploy_live.py checks the services' live /metrics too."""
    result = check_metrics(exposition_of_every_metric())
    assert result.returncode == 0, result.stdout + result.stderr
    refused = check_metrics("# TYPE tongda_lag_seconds_total gauge\ntongda_lag_seconds_total 1\n")
    assert refused.returncode != 0


# --- every query reads metrics that exist, with the labels it uses ----------------------------

# Labels Prometheus itself puts on every series (tools/prometheus.py, the ServiceMonitor);
# `service` is the services' own label too (honor_labels).
TARGET_LABELS = {"namespace", "service", "pod", "instance", "job"}
METRIC_NAME = re.compile(r"\b(tongda[a-z0-9_:]*|process_[a-z0-9_]+|python_[a-z0-9_]+|up)\b")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def defined_series() -> dict[str, set[str]]:
    """{series name: its label names}: shared/metrics.py's metrics as exposed (a counter's
    _total, a histogram's _bucket with `le`, _count and _sum), the default process and GC
    collectors' and `up`."""
    import shared.metrics as defined

    out: dict[str, set[str]] = {"up": set()}
    for metric in vars(defined).values():
        if not isinstance(metric, Counter | Gauge | Histogram):
            continue
        labels, name = set(metric._labelnames), metric._name
        if isinstance(metric, Counter):
            out[f"{name}_total"] = labels
        elif isinstance(metric, Histogram):
            out |= {f"{name}_bucket": labels | {"le"}, f"{name}_count": labels}
            out[f"{name}_sum"] = labels
        else:
            out[name] = labels
    for family in REGISTRY.collect():  # process_*, python_gc_*: built into prometheus_client
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    for rule in rules():  # recording rules: the labels they keep and the ones they add
        if "record" in rule:
            kept = set().union(*(set(split(g)) for g in GROUPING.findall(rule["expr"])))
            labels = kept | set(rule.get("labels", {}))
            out.setdefault(rule["record"], set()).update(labels)
    return out


def split(names: str) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


def label_problems(expr: str, known: dict[str, set[str]]) -> list[str]:
    """What in `expr` reads a metric that is not defined, or a label its metrics lack."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values are not names
    problems = []
    names = [
        m for m in METRIC_NAME.finditer(text) if not re.match(r"\s*(?:=~|!~|!=|=)", text[m.end() :])
    ]
    readable: set[str] = set(TARGET_LABELS)
    for m in names:
        name = m.group(1)
        if name not in known:
            problems.append(f"unknown metric {name}")
            continue
        readable |= known[name]
        selector = re.match(r"\s*\{([^}]*)\}", text[m.end() :])
        for label in MATCHER.findall(selector.group(1)) if selector else []:
            if label not in known[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label}")
    for group in GROUPING.findall(text):
        for label in split(group):
            if label not in readable:
                problems.append(f"no metric here has the label {label}")
    return problems


def test_every_rule_and_panel_reads_defined_metrics_and_labels() -> None:
    """Offline: each rule expression and panel query names metrics shared/metrics.py (or
    prometheus_client's default collectors, or a recording rule) defines, with the labels it
    filters and groups by. tests/test_deploy_live.py checks they answer under load."""
    known = defined_series()
    exprs = [(r.get("alert") or r["record"], r["expr"]) for r in rules()]
    exprs += [(f"{board}: {title}", expr) for board, title, expr in panel_queries()]
    assert len(exprs) > 80
    problems = {what: p for what, expr in exprs if (p := label_problems(expr, known))}
    assert problems == {}


def test_the_label_check_notices_a_wrong_label_or_name() -> None:
    known = defined_series()
    good = "sum by (from_channel, to_channel) (rate(tongda_fallbacks_total[5m]))"
    assert label_problems(good, known) == []
    assert label_problems("sum by (channel, to) (rate(tongda_fallbacks_total[5m]))", known) == [
        "no metric here has the label channel",
        "no metric here has the label to",
    ]
    assert label_problems('tongda_redis_up{op="apply"}', known) == [
        "tongda_redis_up has no label op"
    ]
    assert label_problems("rate(tongda_fallback_total[5m])", known) == [
        "unknown metric tongda_fallback_total"
    ]
    assert label_problems('tongda:slo_errors:ratio_rate1h{slo="deadletters"} > 0.1', known) == []


def test_metric_labels_carry_no_customer_data() -> None:
    personal = {"customer_id", "notification_id", "recipient", "phone", "email", "address", "id"}
    for name, labels in defined_series().items():
        assert not labels & personal, name


# --- dashboards -------------------------------------------------------------------------------


def test_committed_dashboards_are_generated() -> None:
    assert dashboards.main(["--check"]) == 0
    assert {p.name for p in dashboard_files()} == {
        "tongda-sla.json",
        "tongda-channels.json",
        "tongda-inquiries.json",
        "tongda-internals.json",
    }


def test_dashboard_check_notices_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboards, "OUT_DIR", tmp_path)
    monkeypatch.setattr(dashboards, "REPO_ROOT", tmp_path)
    assert dashboards.main([]) == 0
    assert dashboards.main(["--check"]) == 0
    (tmp_path / "tongda-sla.json").write_text("{}\n")
    assert dashboards.main(["--check"]) == 1
    assert dashboards.main([]) == 0
    (tmp_path / "old.json").write_text("{}\n")
    assert dashboards.main(["--check"]) == 1


def test_every_dashboard_filters_on_namespace_and_service() -> None:
    for path in dashboard_files():
        board = json.loads(path.read_text())
        names = {v["name"] for v in board["templating"]["list"]}
        assert {"datasource", "namespace", "service"} <= names, path.name
        exprs = list(dashboards.queries(board))
        assert exprs, path.name
        for title, expr in exprs:
            assert 'namespace=~"$namespace"' in expr, (path.name, title)
            if not expr.startswith("tongda:"):
                assert 'service=~"$service"' in expr, (path.name, title)


def test_provisioning_points_at_the_dashboards() -> None:
    grafana = ROOT / "deploy" / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((grafana / "dashboards" / "tongda.yaml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    (source,) = yaml.safe_load((grafana / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"


# --- a real Prometheus parses everything -----------------------------------------------------


@pytest.fixture(scope="module")
def idle_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A Prometheus with the project's rules and nothing to scrape."""
    work = tmp_path_factory.mktemp("prometheus")
    cfg = write_config(work / "prometheus.yml", {}, scrape_interval_s=1)
    server = PrometheusServer(work / "prometheus.log", cfg, work / "data")
    server.start()
    yield server
    server.stop_sync()


@needs_prometheus
def test_prometheus_loads_every_rule(idle_prometheus: PrometheusServer) -> None:
    loaded = {r["name"] for g in idle_prometheus.rule_groups() for r in g["rules"]}
    expected = {r.get("alert") or r["record"] for r in rules()}
    assert loaded == expected


@needs_prometheus
def test_prometheus_parses_every_rule_and_panel_query(idle_prometheus: PrometheusServer) -> None:
    exprs = [("rules", r.get("alert") or r["record"], r["expr"]) for r in rules()]
    exprs += list(panel_queries())
    assert len(exprs) > 80
    for where, what, expr in exprs:
        idle_prometheus.query(dashboards.concrete(expr))  # PromQLError on a parse error
        assert where and what


@needs_prometheus
def test_prometheus_refuses_a_broken_query(idle_prometheus: PrometheusServer) -> None:
    with pytest.raises(PromQLError, match="bad_data"):
        idle_prometheus.query("sum by (le (rate(x[5m]))")


@needs_prometheus
async def test_start_local_scrapes_its_targets_with_namespace_and_service(
    idle_prometheus: PrometheusServer, tmp_path: Path
) -> None:
    """`make up`'s Prometheus: targets labelled like the ServiceMonitor's (here it scrapes the
    idle Prometheus' own /metrics, as if it were a service named `self`)."""
    server = start_local(tmp_path, {"self": idle_prometheus.port}, scrape_interval_s=0.2)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        deadline = time.monotonic() + 20
        # a scrape is no event we can await: poll the API
        while not server.query('up{namespace="local", service="tongda-self"} == 1'):
            assert time.monotonic() < deadline, server.targets_up()
            await asyncio.sleep(0.1)
        assert server.targets_up() == {"tongda-self": True}
        assert {g["name"] for g in server.rule_groups()} >= {"tongda-operations"}
    finally:
        server.stop_sync()
    assert not server.running

"""A short fault campaign (tools/chaos.py, issue 9): every kind of fault during a mixed load,
then the invariants, from the topics and the sandbox ledger alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.machine import STEP_TIMEOUT
from shared.channel.claims import ORPHAN_DETAIL
from tools.chaos import KINDS, MIX, Fault, Result, Seen, check, run_campaign, summary
from tools.devstack import SERVICES

pytestmark = [pytest.mark.timeout(900)]


@pytest.mark.slow
async def test_a_short_campaign_loses_duplicates_and_resends_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    result = await run_campaign(
        notifications=1000,
        duration_s=120,
        seed=7,
        run_dir=tmp_path,
        pause_s=5,
        deadline_s=300,
        sigkills=2,
        sigterms=1,
        redis_kills=2,
        broker_pauses=1,
        router_joins=1,
        say=lines.append,
    )
    report = summary(result)
    # every fault kind was injected, on every service, and came back
    done = [f for f in result.faults if f.started]
    assert {f.kind for f in done} == set(KINDS), report
    assert {f.target for f in done if f.kind == "sigkill"} == set(SERVICES), report
    assert not [f for f in done if f.error], report
    assert all(f.ready is not None for f in done), report
    # the mix reached every plan, and the load was all published
    assert {s.type for s in MIX} >= {
        "repayment_due",
        "overdue_notice",
        "loan_approved",
        "verification_callback",
        "otp",
    }
    assert len(result.published) == 1000 and result.publish_failures == 0, report
    # the invariants, each on its own so a failure names it
    assert not result.lost, report
    assert not result.duplicated, report
    assert not result.sent_twice, report
    assert not result.unaudited, report
    assert not result.unexpected, report
    assert result.ledger, "the sandbox ledger counted no send at all"
    assert result.ok
    assert any("final" in line and "faults" in line for line in lines), "no progress line"


def test_the_checker_sees_each_broken_invariant() -> None:
    """The verdict is computed, not assumed: each kind of breakage lands in its own list."""
    s = MIX[0]  # expects `delivered`
    ok = {"status": s.expected_status, "attempts": [{"channel": "sms", "outcome": "delivered"}]}
    orphan = {"channel": "voice", "outcome": "failed", "detail": ORPHAN_DETAIL}
    timeout = {"channel": "voice", "outcome": "failed", "detail": f"no outcome {STEP_TIMEOUT}"}
    seen = Seen()
    seen.statuses = {
        "n-ok": [(1.0, ok)],
        "n-dup": [(1.0, ok), (2.0, ok)],
        "n-wrong": [(1.0, {**ok, "status": "failed"})],
        "n-unaudited": [(1.0, ok)],
        # failed because a kill left the voice attempt's outcome unknown: explained, apart
        "n-orphan": [(1.0, {"status": "failed", "attempts": [orphan]})],
        # failed with that detail on a *delivered* attempt only: still unexpected
        "n-wrong-2": [(1.0, {"status": "failed", "attempts": [{**orphan, "outcome": "x"}]})],
        # no voice outcome before the step timeout while the voice service was killed: apart
        "n-timeout-killed": [(70.0, {"status": "failed", "attempts": [timeout]})],
        # the same timeout with no fault of that channel in the notification's life: unexpected
        "n-timeout-calm": [(170.0, {"status": "failed", "attempts": [timeout]})],
    }
    audited = {"r1": ("sms", "delivered")}
    seen.audit = {
        "n-ok": audited,
        "n-dup": audited,
        "n-wrong": audited,
        "n-orphan": {"r2": ("voice", "failed")},
        "n-wrong-2": {"r3": ("voice", "x")},
        "n-timeout-killed": {"r4": ("voice", "failed")},
        "n-timeout-calm": {"r5": ("voice", "failed")},
    }
    ids = ["n-ok", "n-dup", "n-wrong", "n-unaudited", "n-lost", "n-orphan", "n-wrong-2"]
    ids += ["n-timeout-killed", "n-timeout-calm"]
    published = {nid: (0.0, s) for nid in ids}
    published["n-timeout-calm"] = (100.0, s)  # born after the voice kill below
    voice_kill = Fault("sigkill", "voice", 10.0, started=10.0, injected=10.1, ready=22.0)
    sms_kill = Fault("sigkill", "sms", 120.0, started=120.0, injected=120.1, ready=132.0)
    result = Result(
        run_id="x",
        published=published,
        publish_failures=0,
        seen=seen,
        faults=[voice_kill, sms_kill],
        ledger={"sms:n-ok:0:1": 1, "sms:n-dup:0:1": 2},
        log_sizes={},
        seconds=1.0,
    )
    check(result)
    assert result.lost == ["n-lost"]
    assert result.duplicated == ["n-dup"]
    assert result.unexpected == ["n-timeout-calm", "n-wrong", "n-wrong-2"]
    assert result.changed_by_fault == ["n-orphan", "n-timeout-killed"]
    assert result.unaudited == ["n-unaudited"]
    assert result.sent_twice == ["sms:n-dup:0:1"]
    assert not result.ok
    assert "FAIL" in summary(result)

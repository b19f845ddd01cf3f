"""`make demo PROVIDERS=local`: the demo's scenarios through the channels' real providers
(SMPP, SMTP, FCM HTTP v1, SIP) against the local peers the dev stack starts (test SMSC,
aiosmtpd relay, FCM server, SIPp), with the same expected outcomes as on the sandbox."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable

import pytest

from tools.demo import demo_stack_options, run_demo, summary
from tools.devstack import Stack, pid_alive
from tools.scenarios import RULES, SCENARIOS

# The provider each channel's attempts must name (not the sandbox's).
REAL = {"voice": "sip", "sms": "smpp", "email": "smtp", "push": "fcm"}


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_demo_scenarios_through_the_local_peers(
    stack_factory: Callable[..., Awaitable[Stack]],
) -> None:
    if shutil.which("sipp") is None:
        pytest.fail("sipp is missing: install the Debian package sip-tester (make deps)")
    stack = await stack_factory(**demo_stack_options(providers="local"))
    assert stack.peers is not None
    assert stack.service("voice").env["TONGDA_PROVIDER"] == "sip"
    result = await run_demo(
        stack.bootstrap,
        say=None,
        deadline_s=240,
        scenarios=SCENARIOS + RULES,
        clock=stack.clock(),
    )
    assert result.ok, summary(result, verbose=True)
    sent = [a for n in result.notifications for a in n.attempts if a["outcome"] != "suppressed"]
    assert {a["channel"] for a in sent} == set(REAL)
    wrong = [(a["channel"], a.get("provider")) for a in sent if a["provider"] != REAL[a["channel"]]]
    assert not wrong, wrong
    # The outcomes came from the protocols themselves, e.g. SIP's 486 and the SMSC's receipt.
    details = {(a["channel"], a["outcome"]): str(a.get("detail")) for a in sent}
    assert "SIP 486" in details["voice", "busy"]
    assert "ring timeout" in details["voice", "no_answer"]
    assert "stat:DELIVRD" in details["sms", "delivered"]
    assert "DSN" in details["email", "bounced"]
    peers = [p.pid for p in stack.peers.processes]
    assert all(pid is not None and pid_alive(pid) for pid in peers)
    await stack.stop()
    assert not any(pid is not None and pid_alive(pid) for pid in peers)

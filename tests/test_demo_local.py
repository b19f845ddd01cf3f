"""`make demo PROVIDERS=local`: the demo's scenarios through the channels' real providers
(SMPP with Twilio as failover, SMTP, FCM HTTP v1, SIP) against the local peers the dev stack
starts (test SMSC, Twilio API server, aiosmtpd relay, FCM server, SIPp), with the same
expected outcomes as on the sandbox."""

from __future__ import annotations

import re
import shutil
from collections.abc import Awaitable, Callable

import pytest

from tools.demo import demo_stack_options, run_demo, summary
from tools.devstack import Stack, pid_alive
from tools.scenarios import RULES, SCENARIOS

# The provider each channel's attempts must name (not the sandbox's).
REAL = {"voice": "sip", "sms": "smpp", "email": "smtp", "push": "fcm"}
# ... except these scenarios' SMS: the SMSC refuses …0008, the failover chain's Twilio sends it
THROUGH_TWILIO = {"otp-sms-failover"}


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
    assert stack.service("sms").env["TONGDA_PROVIDER"] == "smpp,twilio"
    result = await run_demo(
        stack.bootstrap,
        say=None,
        deadline_s=240,
        scenarios=SCENARIOS + RULES,
        clock=stack.clock(),
    )
    assert result.ok, summary(result, verbose=True)
    sent = [
        (n.scenario.name, a)
        for n in result.notifications
        for a in n.attempts
        if a["outcome"] != "suppressed"
    ]
    assert {a["channel"] for _, a in sent} == set(REAL)

    def expected_provider(name: str, channel: str) -> str:
        return "twilio" if channel == "sms" and name in THROUGH_TWILIO else REAL[channel]

    wrong = [
        (name, a["channel"], a.get("provider"))
        for name, a in sent
        if a.get("provider") != expected_provider(name, a["channel"])
    ]
    assert not wrong, wrong
    # Twilio's status callback (signed; the SMS service checks it) gave the outcome.
    twilio = [a for name, a in sent if name in THROUGH_TWILIO and a["channel"] == "sms"]
    assert [(a["outcome"], a["detail"]) for a in twilio] == [("delivered", "Twilio: delivered")]
    assert "twilio 1 (otp-sms-failover)" in summary(result)
    # The outcomes came from the protocols themselves, e.g. SIP's 486 and the SMSC's receipt.
    details = {
        (a["channel"], a["outcome"]): str(a.get("detail"))
        for name, a in sent
        if name not in THROUGH_TWILIO
    }
    assert "SIP 486" in details["voice", "busy"]
    assert "ring timeout" in details["voice", "no_answer"]
    assert "stat:DELIVRD" in details["sms", "delivered"]
    assert "DSN" in details["email", "bounced"]
    peers = [p.pid for p in stack.peers.processes]
    assert all(pid is not None and pid_alive(pid) for pid in peers)
    await stack.stop()
    assert not any(pid is not None and pid_alive(pid) for pid in peers)
    # The peers' own count on stopping: Twilio took one message and the SMS service accepted
    # its three signed status callbacks (queued, sent, delivered).
    log = (stack.log_dir / "peers.log").read_text()
    stopped = re.search(r"peers stopped: .*", log)
    assert stopped is not None, log[-2000:]
    assert "Twilio: 1 messages, 3 status callbacks (3 answered 200)" in stopped[0], stopped[0]

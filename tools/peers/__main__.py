"""`python -m tools.peers`: the test SMSC, the FCM server, the SMTP relay and the Twilio
API server in one process.

Started by the dev stack (tools/devstack/peers.py) for `make demo PROVIDERS=local`. It
writes the FCM service account key file (`--fcm-key-file`, mode 0600) before listening, and
listens on the given ports of 127.0.0.1 until SIGTERM or SIGINT. The SMSC's password and the
Twilio auth token come from the environment (argv is logged and kept in .run/pids).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from services.sms.smpp.testsmsc import TestSmsc
from tools.peers.fcm import FakeFcm, service_account
from tools.peers.smtp import BouncingRelay, close_relay, serve_relay
from tools.peers.twilio import FakeTwilio

log = logging.getLogger("tools.peers")


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (a private key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    base = f"http://127.0.0.1:{args.fcm_port}"
    info, public_key = service_account(args.fcm_project, f"{base}/token")
    _write_private(args.fcm_key_file, json.dumps(info))
    fcm = FakeFcm(args.fcm_project, info["client_email"], public_key, token_url=f"{base}/token")
    runner = web.AppRunner(fcm.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.fcm_port).start()

    relay = BouncingRelay(_host_port(args.dsn_to))
    smtp_server, _ = await serve_relay(relay, port=args.smtp_port)

    smsc = TestSmsc(
        args.smsc_system_id,
        args.smsc_password,
        args.smsc_port,
        receipt_delay_s=args.receipt_delay,
        steering="contract",
    )
    await smsc.start()

    twilio = FakeTwilio(args.twilio_account_sid, args.twilio_auth_token, steering="contract")
    await twilio.start(args.twilio_port)
    log.info(
        "peers ready: SMSC :%d, FCM :%d, SMTP relay :%d (DSNs to %s), Twilio API :%d",
        smsc.port,
        args.fcm_port,
        args.smtp_port,
        args.dsn_to,
        args.twilio_port,
    )
    try:
        await stop.wait()
    finally:
        await twilio.close()
        await smsc.stop()
        await close_relay(smtp_server, relay)
        await runner.cleanup()
        refused = sum(1 for s in smsc.submits if s.status)
        log.info(
            "peers stopped: %d submits (%d refused), %d FCM sends, %d mails (%d bounced), "
            "Twilio: %d messages, %d status callbacks (%d answered 200)",
            len(smsc.submits),
            refused,
            len(fcm.sends),
            relay.accepted,
            relay.bounced,
            len(twilio.messages),
            len(twilio.callbacks),
            sum(1 for c in twilio.callbacks if c.status == 200),
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.peers", description=__doc__)
    parser.add_argument("--smsc-port", type=int, required=True)
    parser.add_argument("--smsc-system-id", default="tongda")
    parser.add_argument(
        "--smsc-password",
        default=os.environ.get("TONGDA_SMPP_PASSWORD", "secret"),
        help="default: $TONGDA_SMPP_PASSWORD (keep it off the command line)",
    )
    parser.add_argument("--receipt-delay", type=float, default=0.3, help="SMS receipts, s")
    parser.add_argument("--fcm-port", type=int, required=True)
    parser.add_argument("--fcm-project", default="tongda-local")
    parser.add_argument("--fcm-key-file", type=Path, required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--dsn-to", required=True, help="host:port of tongda's SMTP listener")
    parser.add_argument("--twilio-port", type=int, required=True)
    parser.add_argument("--twilio-account-sid", default="AC" + "0" * 32)
    parser.add_argument(
        "--twilio-auth-token",
        default=os.environ.get("TONGDA_TWILIO_AUTH_TOKEN", "secret"),
        help="default: $TONGDA_TWILIO_AUTH_TOKEN (keep it off the command line)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every address
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Local provider peers beside a stack (`providers="local"`): the channel services use their
real providers (SMPP with Twilio as failover, SMTP, FCM HTTP v1, SIP) against peers on this
machine instead of the sandbox (tools/peers: the test SMSC, the Twilio API server, an SMTP
relay, the FCM server, a SIPp UAS), each steered by the address like the sandbox, so the
demo's scenarios end the same way. The SMS service runs the chain `smpp,twilio`: the SMSC
refuses `…0008` (ESME_RSUBMITFAIL), which Twilio then takes, its signed status callbacks
reaching the SMS service's webhook at the port chosen here (`service_port`).

`LocalProviders` picks the ports, starts two supervised processes (`python -m tools.peers`
and SIPp), and gives each channel service the TONGDA_* environment of its provider. Real
networks and real calls do not follow a simulated clock: the calls' timers (ring timeout,
answering-machine heuristic, DTMF wait) and the email bounce window are short real-time
values here, and the router's step timeouts are kept at least `ROUTER_MIN_REAL_TIMEOUT_S`
real seconds long (a call is a few real seconds, hours on the demo's clock).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

from tools.devstack.base import HOST, INFRA_START_TIMEOUT_S, DevstackError, ServiceError
from tools.devstack.net import free_port, free_udp_port, port_open, udp_port_bound
from tools.devstack.process import ManagedProcess

PROVIDERS = ("sandbox", "local")
ROUTER_MIN_REAL_TIMEOUT_S = 60.0
RING_TIMEOUT_S = 2.0  # real seconds of ringing before CANCEL (the sandbox rings 3 s)
BOUNCE_WINDOW_S = 3.0  # real seconds an accepted email waits for a bounce
# The peer's 0005 count restarts after four hours on the stack's clock without a call.
CALLBACK_RESET_SIMULATED_S = 4 * 3600.0
TWILIO_FROM_NUMBER = "+15005550006"  # Twilio's documented test "From" number


class PeerProcess(ManagedProcess):
    """A peer process, ready once its TCP ports accept connections or its UDP port is held."""

    def __init__(
        self,
        name: str,
        log_path: Path,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        tcp_ports: tuple[int, ...] = (),
        udp_port: int | None = None,
        detached: bool = False,
    ) -> None:
        super().__init__(name, log_path, detached=detached)
        self.kind = "peer"
        self.command = argv
        self.env = env
        self.tcp_ports = tcp_ports
        self.udp_port = udp_port
        self.port = tcp_ports[0] if tcp_ports else (udp_port or 0)

    def _up(self) -> bool:
        tcp = all(port_open(HOST, p) for p in self.tcp_ports)
        return tcp and (self.udp_port is None or udp_port_bound(HOST, self.udp_port))

    async def start(self, within_s: float = INFRA_START_TIMEOUT_S) -> None:
        """Spawn and wait until it listens; ServiceError with its log tail otherwise."""
        self._spawn(self.command, self.env)
        deadline = time.monotonic() + within_s
        while not self._up():
            if not self.running:
                raise self._died("before listening")
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(
                    f"{self.name} not listening after {within_s:.0f} s; "
                    f"last lines of {self.log_path}:\n{self.tail()}"
                )
            await asyncio.sleep(0.05)


class LocalProviders:
    """The peers of one stack and the provider settings that point the services at them."""

    def __init__(
        self, log_dir: Path, data_dir: Path, time_scale: float = 1.0, detached: bool = False
    ) -> None:
        sipp = shutil.which("sipp")
        if sipp is None:
            raise DevstackError("sipp not found: run `make deps` (apt-get install sip-tester)")
        self.data_dir = data_dir / "peers"
        self.smsc_port, self.fcm_port, self.smtp_port = free_port(), free_port(), free_port()
        self.dsn_port = free_port()  # the email service's SMTP listener (bounces)
        self.twilio_port = free_port()
        self.sms_http_port = free_port()  # the SMS service's: Twilio's callbacks go there
        self.twilio_account_sid = "AC" + secrets.token_hex(16)
        self.twilio_auth_token = secrets.token_hex(16)
        self.sip_port, self.media_port = free_udp_port(), free_udp_port(even=True)
        self.smpp_password = secrets.token_hex(4)  # SMPP 3.4: at most 8 characters
        self.fcm_key_file = self.data_dir / "fcm-service-account.json"
        from tools.peers.sip import SippPeer

        self.sipp = SippPeer(
            self.sip_port,
            self.media_port,
            self.data_dir / "sipp",
            reset_s=max(2.0, CALLBACK_RESET_SIMULATED_S * time_scale),
        )
        peers_argv = [
            sys.executable, "-m", "tools.peers",
            "--smsc-port", str(self.smsc_port),
            "--fcm-port", str(self.fcm_port),
            "--fcm-key-file", str(self.fcm_key_file),
            "--smtp-port", str(self.smtp_port),
            "--dsn-to", f"{HOST}:{self.dsn_port}",
            "--twilio-port", str(self.twilio_port),
            "--twilio-account-sid", self.twilio_account_sid,
        ]  # fmt: skip
        self.processes = [
            PeerProcess(
                "peers",
                log_dir / "peers.log",
                peers_argv,
                # the secrets by environment: argv is logged and kept in .run/pids
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "TONGDA_SMPP_PASSWORD": self.smpp_password,
                    "TONGDA_TWILIO_AUTH_TOKEN": self.twilio_auth_token,
                },
                tcp_ports=(self.smsc_port, self.fcm_port, self.smtp_port, self.twilio_port),
                detached=detached,
            ),
            PeerProcess(
                "sipp",
                log_dir / "sipp.log",
                self.sipp.argv(sipp),
                udp_port=self.sip_port,
                detached=detached,
            ),
        ]

    async def start(self) -> None:
        """Start every peer; on a failure stop those started and raise."""
        self.sipp.prepare()
        try:
            for proc in self.processes:
                await proc.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for proc in self.processes:
            await proc.stop()

    def service_port(self, name: str) -> int | None:
        """The HTTP port service `name` must listen on (the SMS service's is in the Twilio
        callbacks' URL); None: any."""
        return self.sms_http_port if name == "sms" else None

    def service_env(self, name: str) -> dict[str, str]:
        """The provider configuration of service `name` (nothing for the router's own)."""
        if name == "router":
            return {"TONGDA_MIN_REAL_TIMEOUT_S": repr(ROUTER_MIN_REAL_TIMEOUT_S)}
        if name == "sms":
            return {
                "TONGDA_PROVIDER": "smpp,twilio",  # failover chain: SMPP first
                "TONGDA_SMPP_HOST": HOST,
                "TONGDA_SMPP_PORT": str(self.smsc_port),
                "TONGDA_SMPP_SYSTEM_ID": "tongda",
                "TONGDA_SMPP_PASSWORD": self.smpp_password,
                "TONGDA_TWILIO_BASE_URL": f"http://{HOST}:{self.twilio_port}",
                "TONGDA_TWILIO_ACCOUNT_SID": self.twilio_account_sid,
                "TONGDA_TWILIO_AUTH_TOKEN": self.twilio_auth_token,
                "TONGDA_TWILIO_FROM_NUMBER": TWILIO_FROM_NUMBER,
                "TONGDA_TWILIO_PUBLIC_URL": f"http://{HOST}:{self.sms_http_port}",
            }
        if name == "email":
            return {
                "TONGDA_PROVIDER": "smtp",
                "TONGDA_SMTP_HOST": HOST,
                "TONGDA_SMTP_PORT": str(self.smtp_port),
                "TONGDA_SMTP_SECURITY": "none",
                "TONGDA_SMTP_HELO_NAME": "tongda.local",
                "TONGDA_SMTP_FROM_ADDRESS": "Tongda Bank <noreply@bank.example>",
                "TONGDA_SMTP_INBOUND_HOST": HOST,
                "TONGDA_SMTP_INBOUND_PORT": str(self.dsn_port),
                "TONGDA_SMTP_BOUNCE_WINDOW_S": repr(BOUNCE_WINDOW_S),
            }
        if name == "push":
            return {
                "TONGDA_PROVIDER": "fcm",
                "TONGDA_FCM_SERVICE_ACCOUNT_FILE": str(self.fcm_key_file.resolve()),
                "TONGDA_FCM_BASE_URL": f"http://{HOST}:{self.fcm_port}",
            }
        if name == "voice":
            return {
                "TONGDA_PROVIDER": "sip",
                "TONGDA_SIP_PROXY_HOST": HOST,
                "TONGDA_SIP_PROXY_PORT": str(self.sip_port),
                "TONGDA_SIP_LOCAL_HOST": HOST,
                "TONGDA_SIP_LOCAL_PORT": "0",
                "TONGDA_SIP_RING_TIMEOUT_S": repr(RING_TIMEOUT_S),
                "TONGDA_SIP_AMD_INITIAL_SILENCE_S": "0.5",
                "TONGDA_SIP_AMD_MACHINE_SPEECH_S": "1.5",
                "TONGDA_SIP_DTMF_WAIT_S": "0.5",
                "TONGDA_SIP_TTS_SPEED_WPM": "300",
            }
        return {}

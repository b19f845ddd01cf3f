"""A local stand-in for Twilio's REST API (2010-04-01) and its webhooks, following the
documented shapes: form-encoded `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` and
`.../Calls.json` with HTTP basic auth (account SID, auth token); 201 with the resource JSON;
errors as `{"code", "message", "more_info", "status"}`. After a 201 it POSTs the status
callbacks (MessageStatus / CallStatus, AnsweredBy) to the `StatusCallback` URL, signed with
`X-Twilio-Signature` = base64(HMAC-SHA1(auth token, URL + sorted params name+value)) — its
own implementation of the algorithm, independent of shared/channel/webhooks.py.

The recipient's last four digits steer it: `steering="tests"` (tests/test_twilio.py,
tests/test_webhooks.py) by the tables below; `steering="contract"` (the SMS peer of `make
demo PROVIDERS=local`, served by `python -m tools.peers`) like the SMS sandbox of
docs/CONTRACT.md: `…0003` refused with 21211, `…0004` failed (30008), else delivered (calls
follow the tests' table either way).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from aiohttp import web

API = "/2010-04-01/Accounts/{sid}"

Steering = Literal["tests", "contract"]

# SMS: suffix → (HTTP refusal) or the callbacks' final status and error code
SMS_REFUSALS = {
    "0003": (400, 21211, "The 'To' number {to} is not a valid phone number."),
    "0010": (400, 21610, "Attempt to send to unsubscribed recipient"),
    "0429": (429, 20429, "Too Many Requests"),
    "0500": (500, 20500, "Internal Server Error"),
}
SMS_FINAL = {
    "0004": ("failed", "30008"),  # unknown error
    "0005": ("undelivered", "30005"),  # unknown destination handset
    "0006": ("undelivered", "30003"),  # unreachable handset (switched off)
}
# the same with steering="contract" (the SMS sandbox's addresses)
CONTRACT_SMS_REFUSALS = {"0003": SMS_REFUSALS["0003"]}
CONTRACT_SMS_FINAL = {"0004": SMS_FINAL["0004"]}
CALL_REFUSALS = {
    "0003": (400, 21211, "The 'To' number {to} is not a valid phone number."),
    "0429": (429, 20429, "Too Many Requests"),
}
# voice: suffix → final CallStatus and extra parameters
CALL_FINAL: dict[str, tuple[str, dict[str, str]]] = {
    "0001": ("busy", {}),
    "0002": ("no-answer", {}),
    "0004": ("failed", {}),
    "0006": ("completed", {"AnsweredBy": "machine_end_beep"}),
    "0007": ("canceled", {}),
    "0008": ("failed", {"SipResponseCode": "404"}),
}


def sign(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's request signature, as its helper libraries compute it."""
    payload = url
    for name in sorted(params):
        payload += name + params[name]
    mac = hmac.new(auth_token.encode("utf-8"), payload.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


@dataclass
class Callback:
    """One webhook the fake sent, and the answer it got."""

    url: str
    params: dict[str, str]
    signature: str
    status: int = 0
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeTwilio:
    account_sid: str
    auth_token: str
    steering: Steering = "tests"
    messages: list[dict[str, str]] = field(default_factory=list)
    calls: list[dict[str, str]] = field(default_factory=list)
    callbacks: list[Callback] = field(default_factory=list)
    auth_failures: int = 0

    def __post_init__(self) -> None:
        contract = self.steering == "contract"
        self.sms_refusals = CONTRACT_SMS_REFUSALS if contract else SMS_REFUSALS
        self.sms_final = CONTRACT_SMS_FINAL if contract else SMS_FINAL
        self.app = web.Application()
        self.app.router.add_post(API + "/Messages.json", self.create_message)
        self.app.router.add_post(API + "/Calls.json", self.create_call)
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None

    # --- REST API -------------------------------------------------------------------------

    def _error(self, status: int, code: int, message: str) -> web.Response:
        return web.json_response(
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            status=status,
        )

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            login, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            return False
        ok = scheme == "Basic" and (login, password) == (self.account_sid, self.auth_token)
        return ok and request.match_info["sid"] == self.account_sid

    async def _form(self, request: web.Request) -> dict[str, str] | web.Response:
        if not self._authorised(request):
            self.auth_failures += 1
            return self._error(401, 20003, "Authenticate")
        if request.content_type != "application/x-www-form-urlencoded":
            return self._error(400, 20001, "expected a form-encoded body")
        return {k: str(v) for k, v in (await request.post()).items()}

    async def create_message(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        if isinstance(form, web.Response):
            return form
        to = form.get("To", "")
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return self._error(400, 21603, "A 'From' phone number is required.")
        if not form.get("Body"):
            return self._error(400, 21602, "Message body is required.")
        self.messages.append(form)
        refusal = self.sms_refusals.get(to[-4:])
        if refusal is not None or not (to.startswith("+") and to[1:].isdigit()):
            status, code, message = refusal or SMS_REFUSALS["0003"]
            resp = self._error(status, code, message.format(to=to))
            if status == 429:
                resp.headers["Retry-After"] = "7"
            return resp
        sid = "SM" + uuid.uuid4().hex
        final, error = self.sms_final.get(to[-4:], ("delivered", ""))
        callback = form.get("StatusCallback")
        if callback:
            base = {
                "AccountSid": self.account_sid,
                "ApiVersion": "2010-04-01",
                "From": form.get("From", ""),
                "To": to,
                "MessageSid": sid,
                "SmsSid": sid,
            }
            steps: list[dict[str, str]] = []
            for step, step_error in [("queued", ""), ("sent", ""), (final, error)]:
                params = {**base, "MessageStatus": step, "SmsStatus": step}
                steps.append({**params, "ErrorCode": step_error} if step_error else params)
            self._later(callback, steps)
        return web.json_response(
            {
                "sid": sid,
                "account_sid": self.account_sid,
                "api_version": "2010-04-01",
                "to": to,
                "from": form.get("From"),
                "messaging_service_sid": form.get("MessagingServiceSid"),
                "body": form["Body"],
                "status": "queued",
                "num_segments": "1",
                "direction": "outbound-api",
                "error_code": None,
                "error_message": None,
                "uri": f"{API.format(sid=self.account_sid)}/Messages/{sid}.json",
            },
            status=201,
        )

    async def create_call(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        if isinstance(form, web.Response):
            return form
        to = form.get("To", "")
        if not to or not form.get("From"):
            return self._error(400, 21201, "No 'To' or 'From' number is specified")
        if not (form.get("Url") or form.get("Twiml") or form.get("ApplicationSid")):
            return self._error(400, 21205, "Url parameter is required.")
        if form.get("Twiml"):
            try:
                ET.fromstring(form["Twiml"])
            except ET.ParseError:
                return self._error(400, 13201, "Invalid TwiML")
        self.calls.append(form)
        refusal = CALL_REFUSALS.get(to[-4:])
        if refusal is not None:
            status, code, message = refusal
            resp = self._error(status, code, message.format(to=to))
            if status == 429:
                resp.headers["Retry-After"] = "7"
            return resp
        sid = "CA" + uuid.uuid4().hex
        final, extra = CALL_FINAL.get(to[-4:], ("completed", {"AnsweredBy": "human"}))
        detecting = form.get("MachineDetection") in ("Enable", "DetectMessageEnd")
        if "AnsweredBy" in extra and not detecting:
            extra = {k: v for k, v in extra.items() if k != "AnsweredBy"}
        events = (form.get("StatusCallbackEvent") or "completed").split()
        callback = form.get("StatusCallback")
        if callback and "completed" in events:
            params = {
                "AccountSid": self.account_sid,
                "ApiVersion": "2010-04-01",
                "CallSid": sid,
                "CallStatus": final,
                "Direction": "outbound-api",
                "From": form["From"],
                "To": to,
                "CallDuration": "12" if final == "completed" else "0",
                **extra,
            }
            self._later(callback, [params])
        return web.json_response(
            {
                "sid": sid,
                "account_sid": self.account_sid,
                "to": to,
                "from": form["From"],
                "status": "queued",
                "direction": "outbound-api",
                "api_version": "2010-04-01",
                "uri": f"{API.format(sid=self.account_sid)}/Calls/{sid}.json",
            },
            status=201,
        )

    # --- webhooks -------------------------------------------------------------------------

    def _later(self, url: str, steps: list[dict[str, str]]) -> None:
        task = asyncio.create_task(self._deliver(url, steps))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, steps: list[dict[str, str]]) -> None:
        for params in steps:
            await self.post(url, params)

    async def post(
        self,
        url: str,
        params: dict[str, str],
        signature: str | None = None,
        signed_url: str | None = None,
    ) -> Callback:
        """POST a webhook as Twilio does: signed over `signed_url` (the URL configured in
        Twilio; default `url`) unless `signature` is given ("" = no header)."""
        if self._session is None:
            raise RuntimeError("fake not started")
        if signature is None:
            signature = sign(self.auth_token, signed_url or url, params)
        headers = {"X-Twilio-Signature": signature} if signature else {}
        async with self._session.post(url, data=params, headers=headers) as resp:
            callback = Callback(
                url, params, signature, resp.status, await resp.text(), dict(resp.headers)
            )
        async with self._changed:
            self.callbacks.append(callback)
            self._changed.notify_all()
        return callback

    async def wait_callbacks(self, count: int, within_s: float = 10.0) -> list[Callback]:
        """Wait until `count` webhooks have been answered."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.callbacks) >= count), within_s
            )
        return list(self.callbacks)

    async def start(self, port: int) -> str:
        """Serve on 127.0.0.1:`port`; return the base URL."""
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await self._runner.cleanup()

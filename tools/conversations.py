"""The demo's conversations: borrowers write to tongda, and what must come of it.

After the notification scenarios (tools/demo.py), borrowers whose profiles the demo published
(tools/scenarios.py) send messages through the channel services' `POST /sandbox/inbound` (SMS
text; a missed call on the voice service), and so does a number on no profile. The router's
inquiries desk classifies each one and answers with a standard reply, escalates it
(`inquiries.escalated`, level 2 once `respond_by` passed unresolved), holds collection,
records an opt-out (`customers.preferences`); the hardship inquiry is then resolved as the
agent desk would (`inquiry.resolved/v1` on `inquiries.resolved`), the borrower gets a survey
by SMS, answers it, and the score comes out on `inquiries.feedback`.

Each outcome is read back from the topics (the inbound `comms.record/v1` on `comms.audit`,
`inquiries.escalated`, `inquiries.feedback`, `customers.preferences`, the replies' dispatches
on `tongda.dispatch.sms` and their final `notifications.status`) and from
`GET /v1/inquiries/{id}`. Needs the sandbox providers (their `/sandbox/inbound`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import aiohttp
import orjson

from shared.clock import Clock
from shared.config import Topics
from shared.contract.models import PreferenceState, Tier
from shared.kafka import GapGuard
from shared.masking import mask_phone
from tools.scenarios import LOAN, RULES, SCENARIOS, Scenario, phone

Print = Callable[[str], None]

UNKNOWN_PHONE = phone(77)  # on no profile of the demo's
SHANGHAI = ZoneInfo("Asia/Shanghai")
DEFAULT_DEADLINE_S = 30.0
DEFAULT_LINGER_S = 1.0
MESSAGE_TYPES = ("reply.", "preference.", "survey")  # what tongda sends about an inquiry


@dataclass(frozen=True)
class Conversation:
    """One message a borrower sends, and what tongda must make of it."""

    name: str
    sender: str | None  # the scenario whose profile's phone writes; None: UNKNOWN_PHONE
    text: str
    intent: str
    tier: Tier | None
    channel: Literal["sms", "voice"] = "sms"
    reply: str | None = None  # the one message tongda sends back by SMS (its type)
    figures: Mapping[str, str] = field(default_factory=dict)  # what that reply must quote
    level: int = 0  # the escalation level it must reach (0: not escalated)
    respond_in: timedelta | None = None  # respond_by minus the inquiry's received_at
    held: bool = False  # the borrower's collection notifications are held
    preference: PreferenceState | None = None  # customer.preference/v1 for its channel
    score: int | None = None  # resolved, surveyed by SMS, and the borrower answers this score

    def scenario(self) -> Scenario | None:
        return next((s for s in SCENARIOS + RULES if s.name == self.sender), None)

    def phone(self) -> str:
        s = self.scenario()
        return str(s.profile["phone"]) if s and s.profile else UNKNOWN_PHONE

    def who(self) -> str:
        s = self.scenario()
        name = str(s.profile.get("name", "")) if s and s.profile else "unknown"
        return f"{name} {mask_phone(self.phone())}"

    def customer_id(self, run_id: str) -> str | None:
        s = self.scenario()
        return s.customer_id(run_id) if s else None


URGENT, HIGH, NORMAL = timedelta(minutes=15), timedelta(hours=2), timedelta(hours=24)

CONVERSATIONS: tuple[Conversation, ...] = (
    Conversation(
        "due-date",
        "overdue-voicemail",  # Zhao Min: her overdue notice carried LOAN
        "还款日是哪天？",
        "due_date",
        "normal",
        reply="reply.due_date",
        figures={k: LOAN[k] for k in ("due_date", "amount_due", "loan_id")},
    ),
    Conversation(
        "hardship",
        "overdue-no-answer",  # Wang Fang
        "我这个月失业了，还不上，能不能延期",
        "hardship",
        "urgent",
        reply="reply.escalated",
        level=1,
        respond_in=URGENT,
        held=True,
        score=5,
    ),
    Conversation(
        "fraud",
        "night-collection",  # Deng Hui; left unresolved: level 2 after 15 simulated minutes
        "有人用我的身份证贷款了",
        "fraud",
        "urgent",
        reply="reply.escalated",
        level=2,
        respond_in=URGENT,
    ),
    Conversation(
        "dispute",
        "cap-first",  # Tang Jie
        "利息算错了",
        "dispute",
        "high",
        reply="reply.escalated",
        level=1,
        respond_in=HIGH,
    ),
    Conversation(
        "opt-out",
        "night-otp",  # Deng Hui's other account
        "退订",
        "opt_out",
        None,
        reply="preference.opted_out",
        preference="opted_out",
    ),
    Conversation(
        "unknown",
        None,
        "我还要还多少钱",
        "amount_due",
        "normal",
        reply="reply.generic",
        level=1,
        respond_in=NORMAL,
    ),
    Conversation(
        "missed-call",
        "overdue-voicemail",  # Zhao Min calls back and hangs up
        "",
        "callback_request",
        "high",
        channel="voice",
        level=1,
        respond_in=HIGH,
    ),
)


@dataclass(frozen=True)
class Endpoints:
    """Where the conversations go: the channel services, and the router's API."""

    channels: Mapping[str, str]  # channel → service base URL
    router: str
    api_token: str


@dataclass
class Heard:
    """What came back, for this run's inquiries."""

    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by inquiry id
    escalations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by inquiry id
    feedback: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by inquiry id
    preferences: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by customer
    messages: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # inquiry → nid
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by notification id
    deadletters: dict[str, list[str]] = field(default_factory=dict)  # record key → errors


@dataclass
class Talk:
    """One conversation as played: its inquiry id(s) and what was heard of it."""

    conversation: Conversation
    run_id: str
    inquiry_id: str | None = None
    answer_id: str | None = None  # the survey answer's own inquiry id
    resolved: bool = False
    view: dict[str, Any] | None = None  # GET /v1/inquiries/{id}
    error: str | None = None


@dataclass(frozen=True)
class ConversationResult:
    conversation: Conversation
    inquiry_id: str | None
    record: dict[str, Any] | None  # the inbound comms.record/v1
    escalations: tuple[dict[str, Any], ...]
    messages: tuple[tuple[dict[str, Any], tuple[dict[str, Any], ...]], ...]  # dispatch, statuses
    feedback: tuple[dict[str, Any], ...]
    preferences: tuple[dict[str, Any], ...]
    view: dict[str, Any] | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _of_type(talk: Talk, heard: Heard, type_: str) -> list[tuple[dict[str, Any], list[Any]]]:
    msgs = heard.messages.get(talk.inquiry_id or "", {})
    return [(d, heard.statuses.get(nid, [])) for nid, d in msgs.items() if d.get("type") == type_]


def problems(talk: Talk, heard: Heard) -> list[str]:
    """What does not hold (yet) for this conversation; empty when all does."""
    c, iid = talk.conversation, talk.inquiry_id
    if talk.error:
        return [talk.error]
    if iid is None:
        return ["not sent"]
    own = [r for r in heard.records.get(iid, []) if r.get("intent") != "feedback"]
    if not own:
        return ["no inbound record on the audit topic yet"]
    out: list[str] = []
    rec = own[0]
    cid = c.customer_id(talk.run_id)
    for key in sorted({iid, cid or iid}):
        for error in heard.deadletters.get(key, []):
            out.append(f"a record keyed {key} was dead-lettered: {error}")
    if (rec.get("intent"), rec.get("tier")) != (c.intent, c.tier):
        out.append(
            f"classified {rec.get('intent')}/{rec.get('tier')}, expected {c.intent}/{c.tier}"
        )
    if rec.get("customer_id") != cid:
        out.append(f"customer {rec.get('customer_id')!r}, expected {cid!r}")
    if c.held and "collection held" not in str(rec.get("decision")):
        out.append(f"collection not held: {rec.get('decision')!r}")
    sms = {d.get("type") for d in heard.messages.get(iid, {}).values()} - {"survey"}
    want = {c.reply} if c.reply else set()
    if sms != want:
        out.append(f"messages sent back {sorted(map(str, sms))}, expected {sorted(want)}")
    if c.reply:
        for dispatch, statuses in _of_type(talk, heard, c.reply):
            if [s.get("status") for s in statuses] != ["delivered"]:
                out.append(f"{c.reply}: final statuses {[s.get('status') for s in statuses]}")
            data = dispatch.get("data") or {}
            wrong = {k: data.get(k) for k, v in c.figures.items() if data.get(k) != v}
            if wrong:
                out.append(f"{c.reply} quotes {wrong}, expected {dict(c.figures)}")
    out += _escalation_problems(c, rec, heard.escalations.get(iid, []), cid)
    if c.preference:
        prefs = [
            p
            for p in heard.preferences.get(cid or "", [])
            if p.get("channel") == c.channel and p.get("source") == "inbound_keyword"
        ]
        if [p.get("state") for p in prefs] != [c.preference]:
            out.append(f"preferences {[p.get('state') for p in prefs]}, expected {[c.preference]}")
    if c.score is not None:
        surveys = _of_type(talk, heard, "survey")
        if not talk.resolved:
            out.append("not resolved yet")
        elif [[s.get("status") for s in st] for _, st in surveys] != [["delivered"]]:
            out.append("no survey delivered yet")
        got = [(f.get("score"), f.get("customer_id")) for f in heard.feedback.get(iid, [])]
        if got != [(c.score, cid)]:
            out.append(f"feedback {got}, expected {[(c.score, cid)]}")
    return out


def _escalation_problems(
    c: Conversation, rec: dict[str, Any], events: list[dict[str, Any]], cid: str | None
) -> list[str]:
    levels = [e.get("level") for e in events]
    if c.level == 0:
        return [f"escalated {levels}, expected no escalation"] if events else []
    out: list[str] = []
    if 1 not in levels or (c.level == 2 and 2 not in levels):
        out.append(f"escalation levels {levels}, expected up to level {c.level}")
    if len(set(levels)) != len(levels):
        out.append(f"an escalation level published twice: {levels}")
    for e in events:
        if (e.get("intent"), e.get("tier"), e.get("customer_id")) != (c.intent, c.tier, cid):
            out.append(f"escalated as {e.get('intent')}/{e.get('tier')} for {e.get('customer_id')}")
        if c.respond_in is not None:
            took = datetime.fromisoformat(e["respond_by"]) - datetime.fromisoformat(rec["at"])
            if took != c.respond_in:
                out.append(f"respond_by is received + {took}, expected + {c.respond_in}")
    return out


# --- playing them ---------------------------------------------------------------------------


async def run_conversations(
    bootstrap: str,
    endpoints: Endpoints,
    run_id: str,
    *,
    clock: Clock,
    topics: Topics | None = None,
    conversations: Sequence[Conversation] = CONVERSATIONS,
    deadline_s: float = DEFAULT_DEADLINE_S,
    linger_s: float = DEFAULT_LINGER_S,
    say: Print | None = None,
) -> tuple[ConversationResult, ...]:
    """Play `conversations` as the borrowers of run `run_id` (whose profiles and notifications
    the demo published) and read back what tongda made of them."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    t = topics or Topics()
    note = say or (lambda _: None)
    talks = [Talk(c, run_id) for c in conversations]
    heard = Heard()
    topics_read = [
        t.audit,
        t.escalated,
        t.feedback,
        t.preferences,
        t.status,
        t.dispatch("sms"),
        t.deadletter,
    ]
    consumer = AIOKafkaConsumer(
        *topics_read,
        bootstrap_servers=bootstrap,
        group_id=None,
        client_id=f"tongda-demo-talk-{run_id}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    # tongda's own topics hold a record at every offset: one the broker skipped is read again
    gaps = GapGuard(consumer, topics_read, "tongda-demo", 30.0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    auth = {"Authorization": f"Bearer {endpoints.api_token}"}
    started = time.monotonic()
    await consumer.start()
    try:
        await producer.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def send(talk: Talk, text: str) -> str | None:
                c = talk.conversation
                body: dict[str, str] = {"from": c.phone()}
                if c.channel != "voice":
                    body["text"] = text
                url = f"{endpoints.channels[c.channel]}/sandbox/inbound"
                async with http.post(url, json=body) as resp:
                    reply = await resp.json()
                    if resp.status != 202:
                        talk.error = f"POST {c.channel} /sandbox/inbound: {resp.status} {reply}"
                        return None
                    return str(reply["inquiry_id"])

            ids = await asyncio.gather(*(send(tk, tk.conversation.text) for tk in talks))
            for talk, iid in zip(talks, ids, strict=True):
                talk.inquiry_id = iid
            note(f"{len(talks)} borrowers wrote to tongda through /sandbox/inbound (sms, voice)")
            deadline = time.monotonic() + deadline_s
            complete_at: float | None = None
            while True:
                batch = await gaps.check(await consumer.getmany(timeout_ms=100))
                for records in batch.values():
                    for rec in records:
                        _collect(rec, t, talks, heard)
                for talk in talks:
                    await _advance(talk, heard, producer, t, clock, send)
                now = time.monotonic()
                if complete_at is None and not any(problems(tk, heard) for tk in talks):
                    complete_at = now  # all in: linger to catch a second message or event
                if complete_at is not None and now - complete_at >= linger_s:
                    break
                if now > deadline:
                    note(f"conversations: deadline of {deadline_s:.0f} s passed")
                    break
            for talk in talks:
                if talk.inquiry_id is not None:
                    url = f"{endpoints.router}/v1/inquiries/{talk.inquiry_id}"
                    async with http.get(url, headers=auth) as resp:
                        talk.view = await resp.json() if resp.status == 200 else None
    finally:
        await producer.stop()
        await consumer.stop()
    note(f"conversations played in {time.monotonic() - started:.1f} s")
    return tuple(_result(tk, heard) for tk in talks)


async def _advance(
    talk: Talk,
    heard: Heard,
    producer: Any,
    t: Topics,
    clock: Clock,
    send: Callable[[Talk, str], Any],
) -> None:
    """The agent desk's and the borrower's next step in a conversation with a survey."""
    c, iid = talk.conversation, talk.inquiry_id
    if c.score is None or iid is None:
        return
    # Resolve once the desk is done with it: its inbound record is published last (after the
    # inquiry is stored), so the resolution cannot overtake it.
    if not talk.resolved and heard.escalations.get(iid) and heard.records.get(iid):
        cid = c.customer_id(talk.run_id)
        resolved = {
            "schema": "inquiry.resolved/v1",
            "inquiry_id": iid,
            "customer_id": cid,
            "resolved_at": clock.now().isoformat(),
            "resolution": "instalment plan agreed: 3 monthly payments",
            "agent": "agent-0042",
        }
        await producer.send_and_wait(t.resolved, orjson.dumps(resolved), key=(cid or iid).encode())
        talk.resolved = True
    surveys = _of_type(talk, heard, "survey")
    delivered = any(s.get("status") == "delivered" for _, st in surveys for s in st)
    if talk.resolved and delivered and talk.answer_id is None:
        talk.answer_id = await send(talk, str(c.score)) or ""


def _collect(rec: Any, t: Topics, talks: Sequence[Talk], heard: Heard) -> None:
    if rec.topic == t.deadletter:  # e.g. the resolution, keyed by the customer id
        key = rec.key.decode("utf-8", "replace") if rec.key else ""
        errors = [v.decode("utf-8", "replace") for k, v in rec.headers or () if k == "error"]
        heard.deadletters.setdefault(key, []).extend(errors or ["?"])
        return
    try:
        value = orjson.loads(rec.value)
    except orjson.JSONDecodeError:
        return
    if not isinstance(value, dict):
        return
    ids = {tk.inquiry_id for tk in talks} - {None}
    if rec.topic == t.audit:
        if value.get("direction") == "inbound" and value.get("inquiry_id") in ids:
            heard.records.setdefault(value["inquiry_id"], []).append(value)
    elif rec.topic == t.escalated:
        if value.get("inquiry_id") in ids:
            heard.escalations.setdefault(value["inquiry_id"], []).append(value)
    elif rec.topic == t.feedback:
        if value.get("inquiry_id") in ids:
            heard.feedback.setdefault(value["inquiry_id"], []).append(value)
    elif rec.topic == t.preferences:
        cids = {tk.conversation.customer_id(tk.run_id) for tk in talks}
        if value.get("customer_id") in cids:
            heard.preferences.setdefault(value["customer_id"], []).append(value)
    elif rec.topic == t.status:
        # a message about an inquiry (its status may be read before its dispatch)
        if str(value.get("type")).startswith(MESSAGE_TYPES):
            heard.statuses.setdefault(str(value.get("notification_id")), []).append(value)
    elif rec.topic == t.dispatch("sms"):
        iid = str((value.get("data") or {}).get("inquiry_id"))
        if iid in ids:
            heard.messages.setdefault(iid, {}).setdefault(value["notification_id"], value)


def _result(talk: Talk, heard: Heard) -> ConversationResult:
    iid = talk.inquiry_id or ""
    cid = talk.conversation.customer_id(talk.run_id)
    own = [r for r in heard.records.get(iid, []) if r.get("intent") != "feedback"]
    msgs = heard.messages.get(iid, {})
    return ConversationResult(
        conversation=talk.conversation,
        inquiry_id=talk.inquiry_id,
        record=own[0] if own else None,
        escalations=tuple(heard.escalations.get(iid, [])),
        messages=tuple((d, tuple(heard.statuses.get(n, []))) for n, d in msgs.items()),
        feedback=tuple(heard.feedback.get(iid, [])),
        preferences=tuple(heard.preferences.get(cid or "", [])),
        view=talk.view,
        problems=tuple(problems(talk, heard) + _view_problems(talk)),
    )


def _view_problems(talk: Talk) -> list[str]:
    v, c = talk.view, talk.conversation
    if talk.inquiry_id is None:
        return []
    if v is None:
        return [f"GET /v1/inquiries/{talk.inquiry_id}: not found"]
    if (v.get("intent"), v.get("tier")) != (c.intent, c.tier):
        return [f"GET /v1/inquiries/{{id}} shows {v.get('intent')}/{v.get('tier')}"]
    if c.score is not None and (v.get("feedback") or {}).get("score") != c.score:
        return [f"GET /v1/inquiries/{{id}} shows feedback {v.get('feedback')}"]
    return []


# --- the table ------------------------------------------------------------------------------


def _local(at: str | None, since: str | None = None) -> str:
    """`at` as Shanghai time of day; with its date too when that is not `since`'s date."""
    if not at:
        return "?"
    local = datetime.fromisoformat(at).astimezone(SHANGHAI)
    if since and local.date() != datetime.fromisoformat(since).astimezone(SHANGHAI).date():
        return local.strftime("%m-%d %H:%M")
    return local.strftime("%H:%M")


def _span(delta: timedelta) -> str:
    minutes = round(delta.total_seconds() / 60)
    return f"+{minutes} min" if minutes < 120 else f"+{minutes // 60} h"


def _width(text: str) -> int:
    """Terminal columns: CJK characters and full-width punctuation take two."""
    return sum(2 if ord(ch) >= 0x2E80 else 1 for ch in text)


def _cell(text: str, width: int) -> str:
    """`text` cut and padded to `width` terminal columns."""
    if _width(text) > width:
        while _width(text) > width - 1:
            text = text[:-1]
        text += "…"
    return text + " " * (width - _width(text))


def did(r: ConversationResult) -> str:
    """What tongda did, in a few words (times are the demo clock's, in Shanghai)."""
    parts: list[str] = []
    rec = r.record or {}
    for dispatch, statuses in r.messages:
        if dispatch.get("type") == "survey":
            continue
        final = statuses[0].get("status") if statuses else "…"
        data = dispatch.get("data") or {}
        quoted = [str(data[k]) for k in r.conversation.figures if k in data]
        parts.append(
            f"{dispatch.get('type')} {final}" + (f" ({', '.join(quoted)})" if quoted else "")
        )
    if r.escalations:
        first = r.escalations[0]
        top = max(int(e.get("level") or 1) for e in r.escalations)
        took = datetime.fromisoformat(first["respond_by"]) - datetime.fromisoformat(rec["at"])
        parts.append(
            f"escalated L{top} at {_local(rec.get('at'))}, "
            f"respond_by {_local(first.get('respond_by'), rec.get('at'))} ({_span(took)})"
        )
    if "collection held" in str(rec.get("decision")):
        parts.append("collection held")
    for p in r.preferences:
        parts.append(f"{p.get('channel')} {p.get('state')}")
    resolution = (r.view or {}).get("resolution") or {}
    if resolution:
        survey = any(d.get("type") == "survey" for d, _ in r.messages)
        parts.append(
            f"resolved {_local(resolution.get('resolved_at'))}" + (" → survey" if survey else "")
        )
    if not parts and rec:
        parts.append(str(rec.get("decision")))
    return "; ".join(parts) or "(nothing seen)"


def conversations_summary(results: Sequence[ConversationResult]) -> list[str]:
    """The table: who (masked), text, intent, tier, what tongda did, feedback."""
    lines = [
        "",
        "Inquiries (POST /sandbox/inbound → inquiries.received → the router's desk)",
        f"     {'who':<26}{'text':<22}{'intent':<17} {'tier':<7} what tongda did · feedback",
    ]
    for r in results:
        c, rec = r.conversation, r.record or {}
        text = c.text if c.channel != "voice" else "(missed call)"
        feedback = ", ".join(f"score {f.get('score')}" for f in r.feedback)
        lines.append(
            f"  {'ok' if r.ok else 'XX':<3}{c.who():<26}{_cell(text, 21)} "
            f"{rec.get('intent', '?')!s:<17} {rec.get('tier') or '—'!s:<7} "
            f"{did(r)}{' · feedback ' + feedback if feedback else ''}"
        )
        for p in r.problems:
            lines.append(f"        {p}")
    return lines

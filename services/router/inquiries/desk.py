"""The inquiries desk: what tongda does with each message a borrower sends (docs/inquiries.md).

For every `inquiry.received/v1` (a faust agent; inbound volume is low): find the customer by
the sender index, classify (services/router/intents), then

* `opt_out` / `opt_in`: record the borrower's choice (controls), confirm it once on the
  channel, publish `customer.preference/v1`;
* `feedback` (a score while a survey is pending for that sender): `inquiry.feedback/v1`,
  an audit record and the CSAT metric; a score with no survey pending is `other`;
* `urgent` / `high`: escalate (`inquiry.escalated/v1`, `respond_by`), acknowledge, and for
  `hardship` hold the borrower's collection notifications until the inquiry is resolved;
* `normal`: answer at once with the intent's standard reply and the borrower's own figures
  (the latest notification's data); an unknown sender gets a generic reply and no customer
  data; `other`, and a question whose figures tongda does not have, are escalated.

Replies, acknowledgements, surveys and confirmations are notifications (plans.yaml, types
`reply.*`, `survey`, `preference.*`) published to the requests topic with a stable id, so they
are routed, recorded and deduplicated like any other. The inquiry itself is a Redis hash
(`store.Keys.inquiry`); its SLA timer is a member of a zset claimed with a lease like the
scheduler's, so a level-2 escalation is published once the deadline passed, across restarts.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from services.router.controls import HOLD_FIELD, hold_value, pref_field, pref_value
from services.router.inquiries.index import SenderIndex
from services.router.inquiries.records import inbound_record
from services.router.intents import Classification, Classifier, respond_by_delta
from services.router.machine import timer_member
from services.router.policy.hardship import HardshipHoldConfig
from services.router.store import Store
from shared.clock import Clock
from shared.config import RouterSettings
from shared.contract.codec import decode, dumps
from shared.contract.models import (
    CHANNELS,
    Channel,
    CommsRecord,
    CustomerPreference,
    CustomerProfile,
    InquiryEscalated,
    InquiryFeedback,
    InquiryReceived,
    InquiryResolved,
    NotificationRequested,
    PreferenceState,
    Tier,
)
from shared.errors import InvalidEvent
from shared.masking import mask_address
from shared.metrics import CSAT_SCORES, INQUIRIES, INQUIRY_ESCALATIONS, INQUIRY_SLA_MISSES
from shared.resp import pack
from shared.templates import required_variables

log = logging.getLogger(__name__)

MESSAGE_NS = uuid.UUID("9d7c4f0e-2b1a-4c6e-8f3d-5a7b9c1e2d40")
# The standard reply of each `normal` intent tongda answers itself.
STANDARD_REPLIES = {
    "amount_due": "reply.amount_due",
    "due_date": "reply.due_date",
    "how_to_repay": "reply.how_to_repay",
    "interest_rate": "reply.interest_rate",
}
# What a reply may quote from the borrower's latest notification.
FIGURES = ("amount_due", "currency", "due_date", "loan_id", "interest_rate", "days_overdue")
REPLY_CHANNELS: frozenset[Channel] = frozenset({"sms", "email"})  # where replies are sent
SURVEY_TTL_S = 7 * 24 * 3600  # how long a survey answer is taken
_CJK = re.compile(r"[\u3400-\u9fff]")


def _now_iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _text(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


class InquiryDesk:
    """Handles inquiries, resolutions and SLA deadlines; also the preferences API."""

    def __init__(
        self,
        settings: RouterSettings,
        redis: Redis,
        store: Store,
        producer: AIOKafkaProducer,
        classifier: Classifier,
        hold: HardshipHoldConfig,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.store = store
        self.keys = store.keys
        self.producer = producer
        self.classifier = classifier
        self.hold = hold
        self.clock = clock or settings.clock()
        self.topics = settings.topics
        self.senders = SenderIndex(
            redis, store.keys, settings.address_hash_key.get_secret_value().encode()
        )

    # --- inquiry.received/v1 --------------------------------------------------------------

    async def on_received(self, raw: bytes | None) -> str:
        """Handle one inquiry; raises InvalidEvent (→ dead letter) when it is not valid.
        Returns what was done (for logs and tests): e.g. `answered: reply.due_date`."""
        inq = decode(raw, InquiryReceived)
        key = self.keys.inquiry(inq.id)
        done = await self.redis.hget(key, "decision")
        if done is not None:  # a redelivered inquiry: everything was done the first time
            return str(done.decode() if isinstance(done, bytes) else done)
        sender = self.senders.hash(inq.from_)
        cid = inq.customer_id or await self.senders.customer(inq.from_)
        profile = await self._profile(cid) if cid else None
        c = self.classifier.classify(inq.text, inq.channel)
        survey_of = None
        if c.intent == "feedback":
            pending = await self.redis.get(self.keys.survey(sender))
            if pending is None:
                c = Classification("other", "normal", matched="a score with no survey pending")
            else:
                survey_of = pending.decode() if isinstance(pending, bytes) else str(pending)
        locale = self._locale(profile, inq.text)
        fields: dict[str, str] = {
            "id": inq.id,
            "customer_id": cid or "",
            "channel": inq.channel,
            "from": inq.from_,
            "sender": sender,
            "text": inq.text,
            "locale": locale,
            "received_at": _now_iso(inq.received_at),
            "intent": c.intent,
            "tier": c.tier or "",
        }
        # stored before anything goes out: a resolution that follows the escalation at once
        # finds the inquiry (its `decision` is written last: what marks it handled)
        await self._save(key, cid, fields)
        if c.intent in ("opt_out", "opt_in"):
            decision = await self._preference_keyword(inq, cid, c, locale, fields)
        elif survey_of is not None:
            decision = await self._feedback(inq, cid, c, survey_of, sender, fields)
        else:
            decision = await self._tiered(inq, cid, profile, c, locale, fields)
        fields["decision"] = decision
        await self._save(key, cid, fields)
        INQUIRIES.labels(intent=c.intent, tier=c.tier or "none").inc()
        record = inbound_record(inq, cid, c.intent, c.tier, decision, inquiry_id=survey_of)
        await self._audit(record, cid or sender)
        log.info(
            "inquiry handled",
            extra={
                "inquiry_id": inq.id,
                "from": mask_address(inq.channel, inq.from_),
                "intent": c.intent,
                "tier": c.tier,
                "decision": decision,
            },
        )
        return decision

    async def _tiered(
        self,
        inq: InquiryReceived,
        cid: str | None,
        profile: CustomerProfile | None,
        c: Classification,
        locale: str,
        fields: dict[str, str],
    ) -> str:
        tier: Tier = c.tier or "normal"
        respond_by = inq.received_at + respond_by_delta(tier)
        fields["respond_by"] = _now_iso(respond_by)
        template = STANDARD_REPLIES.get(c.intent)
        answerable = inq.channel in REPLY_CHANNELS  # no replies by voice or app (escalated)
        if tier == "normal" and cid is None and answerable:
            await self._message("reply.generic", inq, cid, locale, {})
            await self._escalate(inq, cid, c, tier, respond_by, fields)
            return "answered: reply.generic; escalated: normal"
        if tier == "normal" and cid is not None and template is not None and answerable:
            figures = await self._figures(cid)
            if self._renders(template, inq.channel, locale, figures):
                fields["reply"] = await self._message(template, inq, cid, locale, figures) or ""
                return f"answered: {template}"
        held = c.intent == "hardship" and cid is not None and self.hold.enabled
        if held:  # first, so that no collection contact starts while the rest is done
            assert cid is not None
            until = inq.received_at + timedelta(seconds=self.hold.max_hold_s)
            await self.redis.hset(
                self.keys.controls(cid), HOLD_FIELD, hold_value(until.timestamp(), inq.id)
            )
        await self._escalate(inq, cid, c, tier, respond_by, fields)
        data = {"respond_by": _now_iso(respond_by), "inquiry_id": inq.id}
        if profile is not None and profile.timezone:
            data["timezone"] = profile.timezone
        fields["reply"] = await self._message("reply.escalated", inq, cid, locale, data) or ""
        return f"escalated: {tier}; collection held" if held else f"escalated: {tier}"

    async def _escalate(
        self,
        inq: InquiryReceived,
        cid: str | None,
        c: Classification,
        tier: Tier,
        respond_by: datetime,
        fields: dict[str, str],
        level: int = 1,
    ) -> None:
        event = InquiryEscalated.model_validate(
            {
                "inquiry_id": inq.id,
                "customer_id": cid,
                "tier": tier,
                "intent": c.intent,
                "text": inq.text,
                "respond_by": respond_by,
                "channel": inq.channel,
                "from": inq.from_,
                "level": level,
            }
        )
        await self.producer.send_and_wait(
            self.topics.escalated, value=dumps(event), key=(cid or fields["sender"]).encode()
        )
        INQUIRY_ESCALATIONS.labels(tier=tier, level=str(level)).inc()
        fields["escalated"] = str(level)
        await self.redis.zadd(self.keys.inquiry_timers, {inq.id: respond_by.timestamp()})

    async def _feedback(
        self,
        inq: InquiryReceived,
        cid: str | None,
        c: Classification,
        survey_of: str,
        sender: str,
        fields: dict[str, str],
    ) -> str:
        assert c.score is not None
        original = _text(await self.redis.hgetall(self.keys.inquiry(survey_of)))
        event = InquiryFeedback(
            inquiry_id=survey_of,
            customer_id=cid or original.get("customer_id") or None,
            score=c.score,
            channel=inq.channel,
            received_at=inq.received_at,
        )
        await self.producer.send_and_wait(
            self.topics.feedback, value=dumps(event), key=(cid or sender).encode()
        )
        CSAT_SCORES.labels(
            intent=original.get("intent", "unknown"),
            tier=original.get("tier") or "none",
            score=str(c.score),
        ).inc()
        # two keys of two hash slots (Redis Cluster): the score first, then the survey closed
        # (were the router to stop between, a second answer would replace the score)
        await self.redis.hset(
            self.keys.inquiry(survey_of),
            mapping={"feedback_score": str(c.score), "feedback_at": _now_iso(inq.received_at)},
        )
        await self.redis.delete(self.keys.survey(sender))
        fields["feedback_for"] = survey_of
        return f"feedback: {c.score}"

    # --- opt-out / opt-in -----------------------------------------------------------------

    async def _preference_keyword(
        self,
        inq: InquiryReceived,
        cid: str | None,
        c: Classification,
        locale: str,
        fields: dict[str, str],
    ) -> str:
        state: PreferenceState = "opted_out" if c.intent == "opt_out" else "opted_in"
        if cid is None:
            return f"{state}: unknown sender, nothing to change"
        channels = list(CHANNELS) if c.scope == "all" else [inq.channel]
        await self._set_preferences(cid, channels, state, "inbound_keyword", inq.received_at)
        fields["reply"] = await self._message(f"preference.{state}", inq, cid, locale, {}) or ""
        return f"{state}: {', '.join(channels)}"

    async def set_preference(
        self, customer_id: str, channel: Channel, state: PreferenceState
    ) -> CustomerPreference:
        """An agent records the borrower's request (the preferences API): same effect as
        the keyword, `source: api`, confirmed once to the borrower's address on file."""
        now = self.clock.now()
        (event,) = await self._set_preferences(customer_id, [channel], state, "api", now)
        profile = await self._profile(customer_id)
        address = _address_on_file(profile, channel) if profile else None
        if address is not None and channel in REPLY_CHANNELS:
            nid = str(uuid.uuid5(MESSAGE_NS, f"api:{customer_id}:{channel}:{state}:{now}"))
            locale = profile.locale if profile and profile.locale else "zh-CN"
            await self._publish_request(
                nid, f"preference.{state}", customer_id, channel, address, locale, {}
            )
        return event

    async def _set_preferences(
        self,
        cid: str,
        channels: list[Channel],
        state: PreferenceState,
        source: str,
        at: datetime,
    ) -> list[CustomerPreference]:
        value = pref_value(state, at.timestamp())
        await self.redis.hset(
            self.keys.controls(cid), mapping={pref_field(ch): value for ch in channels}
        )
        events = [
            CustomerPreference.model_validate(
                {"customer_id": cid, "channel": ch, "state": state, "source": source, "at": at}
            )
            for ch in channels
        ]
        sent = [
            await self.producer.send(self.topics.preferences, value=dumps(ev), key=cid.encode())
            for ev in events
        ]
        await asyncio.gather(*sent)
        return events

    # --- inquiry.resolved/v1 --------------------------------------------------------------

    async def on_resolved(self, raw: bytes | None) -> str:
        """An agent resolved an inquiry: stop its SLA timer, lift a hardship hold (waking the
        held notifications), send one satisfaction survey on its channel."""
        ev = decode(raw, InquiryResolved)
        key = self.keys.inquiry(ev.inquiry_id)
        inq = _text(await self.redis.hgetall(key))
        if not inq:
            raise InvalidEvent("unknown_inquiry", f"inquiry_id: no inquiry {ev.inquiry_id!r}")
        if inq.get("resolved_at"):
            return "already resolved"
        cid = inq.get("customer_id") or None
        await self.redis.zrem(self.keys.inquiry_timers, ev.inquiry_id)
        if cid is not None:
            await self._lift_hold(cid, ev.inquiry_id)
        surveyed = ""
        channel = inq.get("channel", "")
        if channel in REPLY_CHANNELS and inq.get("intent") not in ("opt_out", "opt_in"):
            nid = str(uuid.uuid5(MESSAGE_NS, f"survey:{ev.inquiry_id}"))
            await self._publish_request(
                nid,
                "survey",
                cid or _anonymous(inq["sender"]),
                channel,
                inq["from"],
                inq.get("locale", "zh-CN"),
                {"inquiry_id": ev.inquiry_id},
            )
            await self.redis.set(self.keys.survey(inq["sender"]), ev.inquiry_id, ex=SURVEY_TTL_S)
            surveyed = nid
        await self.redis.hset(
            key,
            mapping={
                "resolved_at": _now_iso(ev.resolved_at),
                "resolution": ev.resolution or "",
                "agent": ev.agent or "",
                "survey": surveyed,
            },
        )
        return "resolved; survey sent" if surveyed else "resolved"

    async def _lift_hold(self, cid: str, inquiry_id: str) -> None:
        ctl = self.keys.controls(cid)
        hold = await self.redis.hget(ctl, HOLD_FIELD)
        if hold is None or not _s(hold).endswith(f"|{inquiry_id}"):
            return
        await self.redis.hdel(ctl, HOLD_FIELD)
        # Wake the notifications waiting on the hold: their deferral timer comes due now
        # and the next decision, without the hold, sends (or waits for the window).
        members = await self.redis.smembers(self.keys.customer_notifications(cid))
        nids = [_s(n) for n in members]
        now = self.clock.epoch_s()
        woken = {}
        for st in await self.store.read_states([(nid, cid) for nid in nids]):
            if st is None:
                continue
            if st.final or st.phase != "retry_wait" or st.category not in self.hold.categories:
                continue
            woken[timer_member("retry", st.customer_id, st.id, st.leg, st.attempt)] = now
        if woken:
            await self.redis.zadd(self.keys.timers(cid), woken, xx=True)

    # --- SLA deadlines --------------------------------------------------------------------

    async def tick(self) -> int:
        """Publish a level-2 escalation for each inquiry whose `respond_by` passed without
        a resolution; return how many. Claimed with a lease: a router that dies mid-way
        leaves the deadline to come due again; the `level2` field makes it fire once."""
        now = self.clock.epoch_s()
        lease = now + self.settings.scheduler_lease_s / self.clock.time_scale
        timers = self.keys.inquiry_timers
        due = await self.store.claim_due(now, lease, self.settings.scheduler_batch, timers)
        fired = 0
        for inquiry_id, _ in due:
            inq = _text(await self.redis.hgetall(self.keys.inquiry(inquiry_id)))
            if inq and not inq.get("resolved_at") and not inq.get("level2_at"):
                await self._level2(inq)
                fired += 1
        await self.store.release(lease, [m for m, _ in due], timers)
        return fired

    async def _level2(self, inq: dict[str, str]) -> None:
        tier: Tier = inq.get("tier") or "normal"  # type: ignore[assignment]
        event = InquiryEscalated.model_validate(
            {
                "inquiry_id": inq["id"],
                "customer_id": inq.get("customer_id") or None,
                "tier": tier,
                "intent": inq["intent"],
                "text": inq.get("text", ""),
                "respond_by": inq["respond_by"],
                "channel": inq["channel"],
                "from": inq["from"],
                "level": 2,
            }
        )
        key = (inq.get("customer_id") or inq["sender"]).encode()
        await self.producer.send_and_wait(self.topics.escalated, value=dumps(event), key=key)
        await self.redis.hset(
            self.keys.inquiry(inq["id"]),
            mapping={"level2_at": _now_iso(self.clock.now()), "escalated": "2"},
        )
        INQUIRY_ESCALATIONS.labels(tier=tier, level="2").inc()
        INQUIRY_SLA_MISSES.labels(tier=tier, intent=inq["intent"]).inc()
        log.warning(
            "inquiry passed its respond_by without a resolution; escalated again (level 2)",
            extra={"inquiry_id": inq["id"], "tier": tier, "intent": inq["intent"]},
        )

    # --- reading --------------------------------------------------------------------------

    async def view(self, inquiry_id: str) -> dict[str, Any] | None:
        """What the API shows of an inquiry: no raw address, no text."""
        inq = _text(await self.redis.hgetall(self.keys.inquiry(inquiry_id)))
        if not inq:
            return None
        channel = inq["channel"]
        escalated = int(inq.get("escalated") or 0)
        return {
            "id": inq["id"],
            "customer_id": inq.get("customer_id") or None,
            "channel": channel,
            "from": mask_address(channel, inq["from"]),
            "received_at": inq["received_at"],
            "intent": inq["intent"],
            "tier": inq.get("tier") or None,
            "decision": inq.get("decision"),
            "reply": inq.get("reply") or None,  # the reply's notification id
            "escalation": {"level": escalated, "respond_by": inq.get("respond_by")}
            if escalated
            else None,
            "respond_by": inq.get("respond_by"),
            "resolution": {
                "resolved_at": inq["resolved_at"],
                "resolution": inq.get("resolution") or None,
                "agent": inq.get("agent") or None,
            }
            if inq.get("resolved_at")
            else None,
            "survey": inq.get("survey") or None,
            "feedback": {"score": int(inq["feedback_score"]), "received_at": inq["feedback_at"]}
            if inq.get("feedback_score")
            else None,
            "feedback_for": inq.get("feedback_for") or None,
        }

    # --- helpers --------------------------------------------------------------------------

    async def _profile(self, cid: str) -> CustomerProfile | None:
        raw = await self.redis.get(self.keys.profile(cid))
        return CustomerProfile.model_validate_json(raw) if raw else None

    @staticmethod
    def _locale(profile: CustomerProfile | None, text: str) -> str:
        if profile is not None and profile.locale:
            return profile.locale
        return "zh-CN" if _CJK.search(text) else "en-US"

    async def _figures(self, cid: str) -> dict[str, Any]:
        """The figures of the customer's latest notification that has any."""
        members = await self.redis.smembers(self.keys.customer_notifications(cid))
        nids = [_s(n) for n in members]
        best: tuple[datetime, dict[str, Any]] | None = None
        for st in await self.store.read_states([(nid, cid) for nid in nids]):
            if st is None:
                continue
            figures = {k: st.data[k] for k in FIGURES if st.data.get(k) is not None}
            if figures and (best is None or st.occurred_at > best[0]):
                best = (st.occurred_at, figures)
        return best[1] if best else {}

    @staticmethod
    def _renders(template: str, channel: str, locale: str, data: Mapping[str, Any]) -> bool:
        return not required_variables(template, channel, locale) - {
            k for k, v in data.items() if v is not None
        }

    async def _message(
        self,
        template: str,
        inq: InquiryReceived,
        cid: str | None,
        locale: str,
        data: Mapping[str, Any],
    ) -> str | None:
        """Send one message about the inquiry to its sender on its channel; return the
        notification id (None where tongda has no message for that channel)."""
        if inq.channel not in REPLY_CHANNELS:
            return None
        nid = str(uuid.uuid5(MESSAGE_NS, f"{template}:{inq.id}"))
        await self._publish_request(
            nid,
            template,
            cid or _anonymous(self.senders.hash(inq.from_)),
            inq.channel,
            inq.from_,
            locale,
            {**data, "inquiry_id": inq.id},
        )
        return nid

    async def _publish_request(
        self,
        nid: str,
        template: str,
        customer_id: str,
        channel: Channel,
        address: str,
        locale: str,
        data: Mapping[str, Any],
    ) -> None:
        contacts = {"phone": address} if channel == "sms" else {"email": address}
        try:
            req = NotificationRequested.model_validate(
                {
                    "schema": "notification.requested/v1",
                    "id": nid,
                    "type": template,
                    "customer_id": customer_id,
                    "priority": "high",
                    "locale": locale,
                    "occurred_at": self.clock.now(),
                    "data": dict(data),
                    "contacts": contacts,
                }
            )
        except ValueError:  # e.g. a sender that is not an E.164 number: nothing to send to
            log.warning(
                "no message sent: the sender's address is not usable on %s",
                channel,
                extra={"notification_id": nid},
            )
            return
        await self.producer.send_and_wait(
            self.topics.requested, value=dumps(req), key=customer_id.encode()
        )

    async def _save(self, key: str, cid: str | None, fields: Mapping[Any, Any]) -> None:
        # The inquiry and the customer's set of inquiries are in two hash slots (Redis
        # Cluster): the set first, so an erasure always finds an inquiry that was written.
        if cid:
            ciq = self.keys.customer_inquiries(cid)
            pipe = self.redis.pipeline(transaction=True)
            pipe.sadd(ciq, fields["id"])
            pipe.expire(ciq, self.settings.retention_s)
            await pipe.execute()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self.settings.retention_s)
        await pipe.execute()

    async def _audit(self, record: CommsRecord, key: str) -> None:
        value = dumps(record)
        if record.customer_id:
            timeline = self.keys.timeline(record.customer_id)
            await self.store.run(
                [
                    pack("LPUSH", timeline, value),
                    pack("LTRIM", timeline, 0, self.settings.timeline_max_records - 1),
                    pack("EXPIRE", timeline, self.settings.retention_s),
                ]
            )
        await self.producer.send_and_wait(self.topics.audit, value=value, key=key.encode())


def _anonymous(sender_hash: str) -> str:
    """The customer id of messages to a sender tongda cannot resolve (no customer data)."""
    return f"anon-{sender_hash[:24]}"


def _address_on_file(profile: CustomerProfile, channel: Channel) -> str | None:
    if channel in ("sms", "voice"):
        return profile.phone
    if channel == "email":
        return profile.email
    return None

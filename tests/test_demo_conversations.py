"""The demo's conversation checks (tools/conversations.py) on what a run could read back:
they hold on the expected records and fail on each way it could go wrong. The end-to-end run
on a real stack is tests/test_devstack.py::test_demo_scenarios_end_to_end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tools.conversations import (
    CONVERSATIONS,
    Conversation,
    Heard,
    Talk,
    _result,
    conversations_summary,
    problems,
)
from tools.scenarios import LOAN

RUN = "abc123"
AT = datetime(2026, 11, 25, 2, 10, tzinfo=UTC)


def conv(name: str) -> Conversation:
    return next(c for c in CONVERSATIONS if c.name == name)


def heard_for(c: Conversation, iid: str = "inq-1") -> tuple[Talk, Heard]:
    """Everything a run reads back when `c` goes as expected."""
    talk = Talk(c, RUN, inquiry_id=iid, resolved=c.score is not None)
    cid = c.customer_id(RUN)
    h = Heard()
    rec = {
        "direction": "inbound",
        "inquiry_id": iid,
        "customer_id": cid,
        "intent": c.intent,
        "tier": c.tier,
        "decision": "escalated: urgent; collection held" if c.held else "done",
        "at": AT.isoformat(),
    }
    h.records[iid] = [rec]
    if c.reply:
        data = {**c.figures, "inquiry_id": iid}
        h.messages[iid] = {"n-1": {"notification_id": "n-1", "type": c.reply, "data": data}}
        h.statuses["n-1"] = [{"notification_id": "n-1", "type": c.reply, "status": "delivered"}]
    if c.level:
        h.escalations[iid] = [
            {
                "inquiry_id": iid,
                "customer_id": cid,
                "intent": c.intent,
                "tier": c.tier,
                "level": level,
                "from": c.phone(),
                "respond_by": (AT + (c.respond_in or timedelta())).isoformat(),
            }
            for level in range(1, c.level + 1)
        ]
    if c.preference:
        pref = {"channel": c.channel, "state": c.preference, "source": "inbound_keyword"}
        h.preferences[cid or ""] = [{"customer_id": cid, **pref}]
    if c.score is not None:
        h.messages[iid]["n-s"] = {"notification_id": "n-s", "type": "survey", "data": {}}
        h.statuses["n-s"] = [{"notification_id": "n-s", "type": "survey", "status": "delivered"}]
        h.feedback[iid] = [{"inquiry_id": iid, "customer_id": cid, "score": c.score}]
    return talk, h


def test_every_conversation_holds_on_what_it_should_read_back() -> None:
    for c in CONVERSATIONS:
        talk, h = heard_for(c)
        assert problems(talk, h) == [], c.name


def test_a_reply_quoting_other_figures_or_sent_twice_fails() -> None:
    talk, h = heard_for(conv("due-date"))
    h.messages["inq-1"]["n-1"]["data"]["due_date"] = "2026-12-31"
    assert any("quotes" in p for p in problems(talk, h))
    talk, h = heard_for(conv("due-date"))
    h.statuses["n-1"].append({"notification_id": "n-1", "status": "delivered"})
    assert any("final statuses" in p for p in problems(talk, h))
    assert LOAN["due_date"] in str(conv("due-date").figures)


def test_a_misclassified_or_unescalated_inquiry_fails() -> None:
    talk, h = heard_for(conv("fraud"))
    h.escalations["inq-1"] = h.escalations["inq-1"][:1]  # no level 2
    assert any("expected up to level 2" in p for p in problems(talk, h))
    talk, h = heard_for(conv("fraud"))
    h.escalations["inq-1"].append(dict(h.escalations["inq-1"][1]))  # level 2 twice
    assert any("published twice" in p for p in problems(talk, h))
    talk, h = heard_for(conv("dispute"))
    h.escalations["inq-1"][0]["respond_by"] = (AT + timedelta(hours=24)).isoformat()
    assert any("respond_by" in p for p in problems(talk, h))
    talk, h = heard_for(conv("dispute"))
    h.records["inq-1"][0]["tier"] = "normal"
    assert any("classified" in p for p in problems(talk, h))


def test_the_unknown_sender_must_get_no_customer() -> None:
    talk, h = heard_for(conv("unknown"))
    assert conv("unknown").customer_id(RUN) is None
    h.records["inq-1"][0]["customer_id"] = "cust-abc123-overdue-busy"
    assert any("customer" in p for p in problems(talk, h))


def test_opt_out_needs_one_preference_and_one_confirmation() -> None:
    c = conv("opt-out")
    talk, h = heard_for(c)
    h.preferences[c.customer_id(RUN) or ""] = []
    assert any("preferences" in p for p in problems(talk, h))
    talk, h = heard_for(c)
    h.messages["inq-1"]["n-2"] = {"notification_id": "n-2", "type": "reply.generic", "data": {}}
    assert any("messages sent back" in p for p in problems(talk, h))


def test_hardship_waits_for_hold_survey_and_score() -> None:
    c = conv("hardship")
    talk, h = heard_for(c)
    h.records["inq-1"][0]["decision"] = "escalated: urgent"
    assert any("not held" in p for p in problems(talk, h))
    talk, h = heard_for(c)
    del h.feedback["inq-1"]
    assert any("feedback" in p for p in problems(talk, h))
    talk, h = heard_for(c)
    h.statuses["n-s"] = []
    assert any("survey" in p for p in problems(talk, h))


def summary_of_every_conversation() -> str:
    """The demo's table when every conversation went as expected (each checked to hold)."""
    results = []
    for i, c in enumerate(CONVERSATIONS):
        talk, h = heard_for(c, f"inq-{i}")
        talk.view = {"intent": c.intent, "tier": c.tier, "feedback": {"score": c.score}}
        results.append(_result(talk, h))
    assert all(r.ok for r in results), [r.problems for r in results]
    return "\n".join(conversations_summary(results))


def test_the_table_masks_every_phone() -> None:
    text = summary_of_every_conversation()
    for c in CONVERSATIONS:
        assert c.phone() not in text
        assert c.phone()[-4:] in text  # masked, still told apart
    assert "score 5" in text and "escalated L2" in text and "(+15 min)" in text


def test_a_dead_lettered_record_of_the_conversation_fails_it() -> None:
    c = conv("hardship")
    talk, h = heard_for(c)
    h.deadletters[c.customer_id(RUN) or ""] = ["unknown_inquiry"]
    assert any("dead-lettered: unknown_inquiry" in p for p in problems(talk, h))


def test_a_respond_by_on_another_day_shows_its_date() -> None:
    """+24 h is the same time of day: the table names the day, or it reads as no time."""
    text = summary_of_every_conversation()
    day_long = [c for c in CONVERSATIONS if c.respond_in == timedelta(hours=24)]
    assert day_long, "a conversation escalated with a day to respond"
    # AT is 10:10 in Shanghai on 11-25: a day later is 11-26 10:10, within the day 10:25
    assert "respond_by 11-26 10:10 (+24 h)" in text
    assert "respond_by 10:25 (+15 min)" in text

"""The inquiry classifier: corpus accuracy (through the same `evaluate` as `make intent-eval`),
normalisation, tier precedence, whole-message opt-out, feedback scores, missed calls, and
rules files that are refused with the file and field named."""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.router.intents import (
    CONTRACT_TIERS,
    SHIPPED_RULES,
    TIERS,
    Classification,
    Classifier,
    load_rules,
    respond_by_delta,
)
from services.router.intents.normalize import Variants, fold, literal_union, normalize, whole
from shared.config import RouterSettings
from shared.errors import ConfigError
from tools import intent_eval
from tools.intent_eval import DEFAULT_CORPUS, evaluate, load_corpus


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.from_file()


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    raw = yaml.safe_load(SHIPPED_RULES.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return raw


def write_rules(tmp_path: Path, rules: dict[str, Any], name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(rules, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


# --- the corpus ------------------------------------------------------------------------------


def test_corpus_meets_the_targets(classifier: Classifier) -> None:
    examples = load_corpus(DEFAULT_CORPUS)
    assert len(examples) >= 300
    assert {e.locale for e in examples} == {"zh-CN", "en"}
    labelled = {e.intent for e in examples}
    assert set(CONTRACT_TIERS) | {"other", "opt_out", "opt_in", "feedback"} <= labelled
    report = evaluate(classifier, examples)
    assert report.tier_accuracy >= 0.95, intent_eval.format_report(report)
    assert report.urgent_below_high == [], intent_eval.format_report(report)
    assert report.passed()


def test_corpus_labels_are_consistent_with_the_contract() -> None:
    for e in load_corpus(DEFAULT_CORPUS):
        expected = CONTRACT_TIERS.get(e.intent, "normal" if e.intent == "other" else None)
        assert e.tier == expected, f"line {e.line}: {e.intent} labelled {e.tier}"
        assert (e.score is not None) == (e.intent == "feedback"), f"line {e.line}"
        assert (e.scope is not None) == (e.intent == "opt_out"), f"line {e.line}"


def test_eval_command_passes_on_the_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    assert intent_eval.main([]) == 0
    out = capsys.readouterr().out
    for heading in ("precision", "recall", "support", "tier accuracy", "urgent below high"):
        assert heading in out
    assert out.rstrip().endswith("PASS")


def test_eval_command_fails_when_an_urgent_message_is_missed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    # a fraud report in words no rule knows: classified `other` (normal), below high
    corpus.write_text(
        '{"text": "zzz qqq", "locale": "en", "intent": "fraud", "tier": "urgent"}\n'
        '{"text": "ok 13800138000", "locale": "en", "intent": "due_date", "tier": "normal"}\n'
        '{"text": "How much do I owe?", "locale": "en", "intent": "amount_due",'
        ' "tier": "normal"}\n',
        encoding="utf-8",
    )
    assert intent_eval.main(["--corpus", str(corpus)]) == 1
    out = capsys.readouterr().out
    assert "urgent below high   1" in out
    assert "fraud/urgent → other/normal" in out
    assert "'zzz qqq'" in out
    assert "13800****8000" in out and "13800138000" not in out  # masked in the report


def test_eval_command_refuses_a_bad_corpus_or_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "hi", "locale": "en", "intent": "other", "tier": "soon"}\n')
    assert intent_eval.main(["--corpus", str(corpus)]) == 2
    assert "line 1: tier" in capsys.readouterr().err
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 2\n")
    assert intent_eval.main(["--rules", str(rules)]) == 2
    assert str(rules) in capsys.readouterr().err


# --- normalisation ---------------------------------------------------------------------------


def test_fold_width_case_and_spaces() -> None:
    assert fold("  ＳＴＯＰ\u3000\tＡＬＬ  ") == "stop all"
    assert fold("５分") == "5分"
    assert fold("I CAN\u2019T   Pay") == "i can't pay"
    assert whole("【退订】 ") == "退订"
    assert whole(" Stop!! 🙏") == "stop"


def test_variants_are_canonical_and_respect_english_words() -> None:
    v = Variants({"换款": "还款", "利率": "利息", "u": "you", "cant": "cannot"})
    assert normalize("换款日是哪天", v) == "还款日是哪天"
    assert normalize("年化利率", v) == "年化利息"
    assert normalize("Can u pay? but I CANT", v) == "can you pay? but i cannot"
    assert normalize("umbrella", v) == "umbrella"  # `u` only as a word of its own


def test_literal_union_finds_the_longest_literal_within_word_bounds() -> None:
    rx = re.compile(literal_union(["end", "stop", "stop all", "还款", "还款日", "pay", "t"]))
    assert [m.group(0) for m in rx.finditer("stop all, i spend; 还款日 我的pay款")] == [
        "stop all",
        "还款日",
        "pay",
    ]
    assert rx.search("spend payment tt") is None  # ASCII literals never inside ASCII words
    assert rx.search("t") is not None and rx.search("end.") is not None


def test_a_long_message_is_cheap_and_only_its_start_is_matched(classifier: Classifier) -> None:
    limit = classifier.rules.max_chars
    filler = "我们聊聊天气和周末的安排吧。" * (limit // 10)
    started = time.perf_counter()
    assert classifier.classify(filler * 20 + "我手机丢了", "email").intent == "other"
    assert time.perf_counter() - started < 1.0  # without the limit: seconds
    assert classifier.classify("我手机丢了。" + filler * 20, "email").intent == "fraud"


def test_typos_variants_and_mixed_language_classify(classifier: Classifier) -> None:
    assert classifier.classify("换款日是哪天", "sms").intent == "due_date"
    rate = classifier.classify("利率多少？", "sms")
    assert rate.intent == "interest_rate"
    assert rate.matched == "interest_rate: keyword '利息'"  # 利率 → 利息
    assert classifier.classify("why is the intrest so high", "sms").intent == "interest_rate"
    assert classifier.classify("ＡＰＲ是多少", "sms").intent == "interest_rate"
    assert classifier.classify("我的payment什么时候due", "sms").intent == "due_date"
    assert classifier.classify("手機丟了！！", "sms").intent == "fraud"  # traditional characters


# --- precedence ------------------------------------------------------------------------------


def test_higher_tier_wins(classifier: Classifier) -> None:
    # asks the amount (normal) and says they lost their job (urgent)
    got = classifier.classify("How much do I owe? I lost my job and cannot pay", "sms")
    assert (got.intent, got.tier) == ("hardship", "urgent")
    # asks the due date (normal) and disputes a fee (high)
    got = classifier.classify("When is it due? And why was I charged a late fee?", "sms")
    assert (got.intent, got.tier) == ("dispute", "high")


def test_tier_beats_file_order_and_file_order_breaks_ties(
    tmp_path: Path, shipped: dict[str, Any]
) -> None:
    rules = copy.deepcopy(shipped)
    intents = rules["intents"]
    # listed first in the file, but normal: never above an urgent or high match
    rules["intents"] = {
        "pets": {"tier": "normal", "keywords": {"en": ["dog"]}},
        "pets_urgent": {"tier": "urgent", "keywords": {"en": ["dog ate"]}},
        "pets_high_a": {"tier": "high", "keywords": {"en": ["cat"]}},
        "pets_high_b": {"tier": "high", "keywords": {"en": ["cat"]}},
        **intents,
    }
    c = Classifier.from_file(write_rules(tmp_path, rules))
    assert c.classify("the dog ate my card", "sms").intent == "pets_urgent"
    assert c.classify("the cat and the dog", "sms").intent == "pets_high_a"
    # within the urgent tier, fraud is listed before hardship in the shipped file
    assert c.classify("my phone was stolen and I lost my job", "sms").intent == "fraud"
    order = list(rules["intents"])
    order.remove("pets_high_b")
    order.insert(order.index("pets_high_a"), "pets_high_b")
    swapped = {**rules, "intents": {k: rules["intents"][k] for k in order}}
    c2 = Classifier.from_file(write_rules(tmp_path, swapped, "swapped.yaml"))
    assert c2.classify("the cat and the dog", "sms").intent == "pets_high_b"


def test_classify_takes_the_first_candidate_and_candidates_are_by_tier(
    classifier: Classifier,
) -> None:
    decided_elsewhere = {"opt_out", "opt_in", "feedback"}
    for e in load_corpus(DEFAULT_CORPUS):
        found = classifier.candidates(e.text)
        ranks = [TIERS.index(c.tier) for c in found if c.tier is not None]
        assert ranks == sorted(ranks), e.text
        got = classifier.classify(e.text, e.channel)
        if got.intent in decided_elsewhere or got.matched in ("missed call", "empty message"):
            continue
        assert got == (found[0] if found else Classification("other", "normal")), e.text
        if any(c.tier == "urgent" for c in found):
            assert got.tier == "urgent", e.text
    many = classifier.candidates("I lost my job, how much do I owe, please call me back")
    assert [c.intent for c in many] == ["hardship", "callback_request", "amount_due"]


def test_nothing_matched_is_other(classifier: Classifier) -> None:
    got = classifier.classify("good morning", "sms")
    assert (got.intent, got.tier, got.matched) == ("other", "normal", None)


# --- opt-out / opt-in ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop",
        " Stop. ",
        "ＳＴＯＰ",
        "Unsubscribe",
        "QUIT",
        "end",
        "Cancel",
        "opt out",
        "OPT  OUT",
        "revoke",
        "退订",
        "【退订】",
        "TD",
        "td",
        "T",
        "ｔ",
        "Stop!! 🙏",
    ],
)
def test_opt_out_keywords_on_the_whole_message(classifier: Classifier, text: str) -> None:
    got = classifier.classify(text, "sms")
    assert (got.intent, got.tier, got.scope) == ("opt_out", None, "this")


@pytest.mark.parametrize("text", ["STOP ALL", "stop  all", "Stop All.", "全部退订", "全部退订！"])
def test_opt_out_of_every_channel(classifier: Classifier, text: str) -> None:
    got = classifier.classify(text, "email")
    assert (got.intent, got.tier, got.scope) == ("opt_out", None, "all")


@pytest.mark.parametrize("text", ["START", "start", "Ｓｔａｒｔ", "订阅", "订阅。"])
def test_opt_in(classifier: Classifier, text: str) -> None:
    got = classifier.classify(text, "sms")
    assert (got.intent, got.tier, got.scope) == ("opt_in", None, None)


@pytest.mark.parametrize(
    "text",
    [
        "I don't want to stop paying",
        "怎么退订短信",
        "stop sending me promos please",
        "退订T",
        "please don't cancel my loan application",
        "is the end of the month ok",
        "STOP IT NOW",
        "TDD",
        "start date?",
        "我不想退订",
    ],
)
def test_keywords_inside_a_longer_message_are_not_opt_out(
    classifier: Classifier, text: str
) -> None:
    assert classifier.classify(text, "sms").intent not in ("opt_out", "opt_in")


# --- feedback and missed calls ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("5", 5),
        ("５", 5),
        (" 1 ", 1),
        ("5分", 5),
        ("3 分", 3),
        ("5 stars", 5),
        ("2 star", 2),
        ("4星", 4),
        ("五星", 5),
        ("five stars", 5),
        ("3 ⭐", 3),
        ("5stars", 5),
        ("5!", 5),
        ("4/5", 4),
    ],
)
def test_feedback_scores(classifier: Classifier, text: str, score: int) -> None:
    got = classifier.classify(text, "sms")
    assert (got.intent, got.tier, got.score) == ("feedback", None, score)


@pytest.mark.parametrize("text", ["0", "6", "10", "55", "5000", "5 stars please call me", "⭐"])
def test_not_feedback(classifier: Classifier, text: str) -> None:
    assert classifier.classify(text, "sms").intent != "feedback"


def test_missed_inbound_call_is_a_callback_request(classifier: Classifier) -> None:
    for text in ("", "  \n"):
        got = classifier.classify(text, "voice")
        assert (got.intent, got.tier, got.matched) == ("callback_request", "high", "missed call")
    assert classifier.classify("", "sms").intent == "other"


def test_classification_is_frozen_and_respond_by(classifier: Classifier) -> None:
    got = classifier.classify("Please call me back", "sms")
    assert (got.intent, got.tier) == ("callback_request", "high")
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.intent = "other"  # type: ignore[misc]
    assert respond_by_delta("urgent") == timedelta(minutes=15)
    assert respond_by_delta("high") == timedelta(hours=2)
    assert respond_by_delta("normal") == timedelta(hours=24)


# --- rules files -----------------------------------------------------------------------------


def test_operator_adds_an_intent(tmp_path: Path, shipped: dict[str, Any]) -> None:
    """The worked example of docs/inquiries.md."""
    c = Classifier.from_file()
    assert c.classify("能开一下结清证明吗", "sms").intent == "other"
    rules = copy.deepcopy(shipped)
    rules["intents"]["settlement_letter"] = {
        "tier": "normal",
        "description": "asks for a letter confirming the loan is paid off",
        "keywords": {"zh-CN": ["结清证明", "还清证明"], "en": ["closure letter"]},
        "patterns": {"en": [r"\b(settlement|paid[- ]off) (letter|certificate)\b"]},
    }
    path = write_rules(tmp_path, rules)
    settings = RouterSettings(intents_path=path)
    c = Classifier.from_file(settings.intents_path)
    got = c.classify("能开一下结清证明吗", "sms")
    assert (got.intent, got.tier) == ("settlement_letter", "normal")
    assert c.classify("Can I get a paid-off letter?", "email").intent == "settlement_letter"
    # an urgent message mentioning the letter is still urgent
    assert c.classify("我失业了，结清证明先不要了", "sms").tier == "urgent"


def test_settings_read_the_rules_path_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TONGDA_INTENTS_PATH", "/etc/tongda/intents.yaml")
    assert RouterSettings().intents_path == Path("/etc/tongda/intents.yaml")
    monkeypatch.delenv("TONGDA_INTENTS_PATH")
    assert RouterSettings().intents_path is None


def _broken(shipped: dict[str, Any], change: str) -> dict[str, Any]:
    rules = copy.deepcopy(shipped)
    if change == "regex":
        rules["intents"]["fraud"]["patterns"]["en"] = ["(unclosed"]
    elif change == "unknown_field":
        rules["intents"]["fraud"]["keyword"] = ["typo"]
    elif change == "missing_intent":
        del rules["intents"]["hardship"]
    elif change == "wrong_tier":
        rules["intents"]["fraud"]["tier"] = "normal"
    elif change == "bad_tier":
        rules["intents"]["fraud"]["tier"] = "critical"
    elif change == "reserved":
        rules["intents"]["other"] = {"tier": "normal", "keywords": {"en": ["x"]}}
    elif change == "no_rule":
        rules["intents"]["empty"] = {"tier": "high"}
    elif change == "opt_clash":
        rules["keywords"]["opt_in"].append("STOP")
    elif change == "score":
        rules["feedback"]["scores"]["6"] = 6
    elif change == "max_chars":
        rules["max_chars"] = 10
    return rules


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("regex", "intents.fraud.patterns.en.0"),
        ("unknown_field", "intents.fraud.keyword"),
        ("missing_intent", "intents: Value error, the contract's intent 'hardship' is missing"),
        ("wrong_tier", "intents: Value error, intent 'fraud' must be tier 'urgent'"),
        ("bad_tier", "intents.fraud.tier"),
        ("reserved", "intents.other"),
        ("no_rule", "intents.empty"),
        ("opt_clash", "keywords: Value error, 'STOP' is in both opt_out and opt_in"),
        ("score", "feedback.scores.6"),
        ("max_chars", "max_chars: Input should be greater than or equal to 100"),
    ],
)
def test_bad_rules_file_names_file_and_field(
    tmp_path: Path, shipped: dict[str, Any], change: str, field: str
) -> None:
    path = write_rules(tmp_path, _broken(shipped, change))
    with pytest.raises(ConfigError) as err:
        load_rules(path)
    assert str(path) in str(err.value)
    assert field in str(err.value)


def test_unreadable_invalid_yaml_and_duplicate_keys(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"cannot read intent rules .*nope\.yaml"):
        load_rules(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("intents: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        load_rules(broken)
    dup = tmp_path / "dup.yaml"
    dup.write_text(SHIPPED_RULES.read_text(encoding="utf-8") + "version: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"dup\.yaml.*duplicate key 'version'"):
        load_rules(dup)

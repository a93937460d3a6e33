"""The pure alert rules (service.core.alerts): facts and a fixed `now` in, alerts out."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from service.core.alerts import (
    CRITICAL,
    WARNING,
    Facts,
    Limits,
    SigninTrouble,
    TokenLife,
    ago,
    alert_key,
    evaluate,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def causes(facts: Facts, now: datetime = NOW, limits: Limits | None = None) -> list[str]:
    return [a.cause for a in evaluate(facts, now, limits)]


def test_nothing_wrong_means_no_alert() -> None:
    assert evaluate(Facts(last_mail_at=NOW - timedelta(hours=3)), NOW) == []


def test_signin_alert_waits_out_a_short_hiccup_then_is_critical() -> None:
    trouble = SigninTrouble("imap", NOW - timedelta(minutes=5), "cannot reach IMAP x:993")
    assert causes(Facts(signin=(trouble,))) == []
    later = NOW + timedelta(minutes=11)
    [alert] = evaluate(Facts(signin=(trouble,)), later)
    assert (alert.cause, alert.severity) == ("signin", CRITICAL)
    assert "the mailbox (IMAP)" in alert.title and "cannot reach IMAP x:993" in alert.detail
    assert "introloop auth" in alert.fix


def test_one_signin_alert_names_every_failing_channel() -> None:
    since = NOW - timedelta(hours=2)
    facts = Facts(signin=(SigninTrouble("smtp", since, "535 bad"),
                          SigninTrouble("oauth", since, "invalid_grant")))
    [alert] = evaluate(facts, NOW)
    assert "sending (SMTP)" in alert.title and "OAuth sign-in" in alert.title
    assert "535 bad" in alert.detail and "invalid_grant" in alert.detail
    assert alert.since == since and "2 h" in alert.detail


def test_outbox_overdue_or_retrying_is_critical() -> None:
    assert causes(Facts(outbox_overdue_since=NOW - timedelta(minutes=90))) == []
    [alert] = evaluate(Facts(outbox_overdue_since=NOW - timedelta(hours=3)), NOW)
    assert (alert.cause, alert.severity) == ("outbox", CRITICAL)
    [alert] = evaluate(Facts(outbox_retrying=2, outbox_error="451 try later"), NOW)
    assert "2 message(s) failed 5 times" in alert.detail and "451 try later" in alert.detail


def test_token_expiry_warns_two_days_ahead_and_is_critical_once_past() -> None:
    life = TokenLife("referrals@x.example", "google", NOW + timedelta(days=3), "Testing app")
    assert causes(Facts(tokens=(life,))) == []
    [alert] = evaluate(Facts(tokens=(life,)), NOW + timedelta(days=1, hours=1))
    assert (alert.cause, alert.severity) == ("token-expiry", WARNING)
    assert alert.title == "The Google sign-in of referrals@x.example expires in 47 h"
    assert "introloop auth google" in alert.fix and "Testing app" in alert.detail
    [alert] = evaluate(Facts(tokens=(life,)), NOW + timedelta(days=4))
    assert alert.severity == CRITICAL and "ago" in alert.title


def test_silence_after_the_configured_quiet_spell_and_never_with_zero() -> None:
    facts = Facts(last_mail_at=NOW - timedelta(days=7, minutes=1))
    assert causes(facts) == ["silence"]
    assert causes(facts, limits=Limits(silence=timedelta(days=8))) == []
    assert causes(facts, limits=Limits(silence=timedelta(0))) == []
    assert causes(Facts(last_mail_at=None)) == []  # never watched yet: nothing to say


def test_unclear_and_quarantine_are_warnings() -> None:
    facts = Facts(unclear_waiting=2, unclear_oldest=NOW - timedelta(days=5),
                  quarantined_recent=1, quarantined_total=4)
    alerts = evaluate(facts, NOW)
    assert [(a.cause, a.severity) for a in alerts] == [("unclear", WARNING),
                                                       ("quarantine", WARNING)]
    assert "2 unclear answer(s)" in alerts[0].title and "5 days" in alerts[0].detail
    assert "introloop review" in alerts[0].fix
    assert "4 in quarantine" in alerts[1].detail and "quarantine retry" in alerts[1].fix


def test_critical_alerts_come_first() -> None:
    facts = Facts(quarantined_recent=1, outbox_retrying=1,
                  last_mail_at=NOW - timedelta(days=30))
    assert causes(facts) == ["outbox", "silence", "quarantine"]


def test_alert_key_is_one_per_cause_per_day() -> None:
    assert alert_key("signin", date(2026, 11, 20)) == "alert:signin:2026-11-20"


def test_ago_is_short_and_human() -> None:
    assert [ago(timedelta(minutes=m)) for m in (0, 45, 119, 120, 60 * 47, 60 * 48)] == [
        "0 min", "45 min", "119 min", "2 h", "47 h", "2 days"]

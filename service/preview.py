"""`introloop preview`: render a template with realistic sample data, as people will see it.

Writes DIR/<name>.html, .txt and .eml (the whole message, headers included, openable in any
mail client) and, when Chromium and Playwright are installed, DIR/<name>-phone.png and
DIR/<name>-desktop.png. Operators use it to see their edits (INTROLOOP_TEMPLATES_DIR) before
any real person does; the rendering tests use the same samples.

The sample contexts are built with the same helpers the outbox uses (`addressee`,
`answer_choices`, `names_of`), so they have the shape of the real thing. A template without
a sample here gets the common variables only, and a clear error if it needs more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from service.adapters.templates import Renderer, TemplateError
from service.core import tokens as tk
from service.core.model import Outcome, Person
from service.core.outgoing import (
    Addressee,
    Envelope,
    addressee,
    answer_choices,
    build_message,
    mailto,
    names_of,
    stable_message_id,
)
from service.core.summary import (
    DeliveryRecord,
    Month,
    PartyRecord,
    ReferralRecord,
    SuppressionRecord,
    UnclearRecord,
    member_summary,
    network_summary,
)

SECRET = b"preview-only-secret-never-used-for-real-mail"
NOW = datetime(2026, 10, 8, 9, 30, tzinfo=UTC)
TZ = ZoneInfo("Europe/Lisbon")


ALICE = Person("alice@martin-partners.example", "Alice Martin")
# a non-ASCII name, as many parties have, to check headers and bodies encode it right
JOSE = Person("jose@muller-lukasiewicz.example", "José Müller-Łukasiewicz")
CAROL = Person("carol@studio-nguyen.example", "Carol Nguyễn")
DEV = Person("dev@harbour.example", "")  # a member known only by address
ERIN = Person("erin@quay.example", "Erin O'Brien")
OPERATOR = Person("ops@founders.example", "Operator")


@dataclass(frozen=True)
class Sample:
    """The people and network a preview talks about."""

    network_name: str = "Lisbon Founders Circle"
    address: str = "referrals@founders.example"
    referrer: Person = ALICE
    party: Person = JOSE
    other: Person = CAROL
    second_referrer: Person = DEV
    second_other: Person = ERIN
    operator: Person = OPERATOR
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def network(self) -> dict[str, str]:
        """The `network` variable."""
        return {"name": self.network_name, "address": self.address}


def _day(moment: datetime) -> str:
    local = moment.astimezone(TZ)
    return f"{local:%A} {local.day} {local:%B %Y}"


def _intro(sample: Sample, party_id: int, referral_id: int, referrer: Person, party: Person,
           others: list[Person], introduced: datetime, subject: str) -> dict[str, Any]:
    other_views: list[Addressee] = [addressee(o) for o in others]
    return {
        "party": addressee(party),
        "referrer": addressee(referrer),
        "others": other_views,
        "others_names": names_of(other_views),
        "others_short": names_of(other_views, short=True),
        "referral": {"id": referral_id, "subject": subject,
                     "introduced_on": _day(introduced)},
    }


def _asking(sample: Sample, party_id: int, facts: dict[str, Any]) -> dict[str, Any]:
    choices = answer_choices(SECRET, sample.address, party_id, facts["others_names"])
    return {
        "choices": choices,
        "answers": {c.kind: c.url for c in choices},
        "stop_address": next(c.address for c in choices if c.kind == "optout"),
        "reply_address": tk.plus_address(sample.address, tk.make_token(SECRET, party_id, "x")),
    }


def _base(sample: Sample, recipient: Person, kind: str) -> dict[str, Any]:
    return {"network": sample.network, "recipient": addressee(recipient), "kind": kind}


def _first(sample: Sample) -> dict[str, Any]:
    return _intro(sample, 12, 7, sample.referrer, sample.party, [sample.other],
                  NOW - timedelta(days=3), "Intro: José <> Carol (design partners)")


REPLY_POSITIVE = ("We met for coffee on Tuesday and it clicked: Carol's studio is redesigning "
                  "our onboarding, first sprint starts next week. Thank you!")
REPLY_NEGATIVE = ("Lovely conversation, but honestly not a fit right now: they need a "
                  "full-time in-house designer and we only do projects.\n\nHappy to help "
                  "them find someone though.")


def _party_mail(kind: str, **extra: Any) -> Callable[[Sample], dict[str, Any]]:
    def build(sample: Sample) -> dict[str, Any]:
        intro = _first(sample)
        ctx = {**_base(sample, sample.party, kind), **intro, **_asking(sample, 12, intro)}
        ctx.update(quote="", reply_text="", **extra)
        return ctx
    return build


def _member_mail(kind: str, reply: str, outcome: str) -> Callable[[Sample], dict[str, Any]]:
    def build(sample: Sample) -> dict[str, Any]:
        ctx = {**_base(sample, sample.referrer, kind), **_first(sample)}
        ctx.update(quote=reply, reply_text=reply, outcome=outcome)
        return ctx
    return build


def _unclear(sample: Sample) -> dict[str, Any]:
    ctx = {**_base(sample, sample.operator, "unclear_review"), **_first(sample)}
    text = "Hmm, we talked briefly. Let's see <b>what happens</b> after the summer."
    verdict = tk.plus_address(sample.address, tk.make_token(SECRET, 31, "u"))
    ctx.update(quote=text, reply_text=text, outcome="unclear", verdict_address=verdict,
               flagged="", verdicts={w: mailto(verdict, w, w)
                                     for w in ("positive", "negative", "pending")})
    return ctx


def _combined(sample: Sample) -> dict[str, Any]:
    first = _first(sample)
    second = _intro(sample, 19, 11, sample.second_referrer, sample.party,
                    [sample.second_other], NOW - timedelta(days=7), "Erin, meet José")
    ctx = {**_base(sample, sample.party, "combined_request"), **first,
           **_asking(sample, 12, first)}
    intros = []
    for pid, facts, again in ((12, first, False), (19, second, True)):
        choices = answer_choices(SECRET, sample.address, pid, facts["others_names"])
        intros.append({**facts, "choices": choices,
                       "answers": {c.kind: c.url for c in choices}, "asking_again": again})
    ctx.update(intros=intros, quote="", reply_text="")
    return ctx


def _records(sample: Sample) -> list[ReferralRecord]:
    """A few referrals by the sample referrer over the last months, with every kind of answer."""
    def party(person: Person, outcome: Outcome | None, days: int, quote: str = "",
              status: str = "answered") -> PartyRecord:
        return PartyRecord(person=person, status=status, outcome=outcome,
                           outcome_at=NOW - timedelta(days=days) if outcome else None,
                           quote=quote, asked_at=NOW - timedelta(days=days + 3))
    ref, jose, carol, erin = sample.referrer, sample.party, sample.other, sample.second_other
    return [
        ReferralRecord(1, ref, NOW - timedelta(days=30), "Intro: José <> Carol", (
            party(jose, Outcome.POSITIVE, 20, REPLY_POSITIVE),
            party(carol, Outcome.POSITIVE, 19, "Great fit, thank you Alice!"))),
        ReferralRecord(2, ref, NOW - timedelta(days=25), "Meet Erin", (
            party(jose, Outcome.NEGATIVE, 15, REPLY_NEGATIVE),
            party(erin, None, 0, status="requested"))),
        ReferralRecord(3, ref, NOW - timedelta(days=22), "Carol <> Erin", (
            party(carol, Outcome.PENDING, 12, "Call booked for next week.", "pending"),
            party(erin, Outcome.POSITIVE, 10, "Lovely person, we start a pilot."))),
        ReferralRecord(4, ref, NOW - timedelta(days=80), "Intro: Erin <> José", (
            party(erin, Outcome.POSITIVE, 70, "Worked out well."),
            party(jose, Outcome.POSITIVE, 69, "Yes!"))),
    ]


def _monthly(sample: Sample) -> dict[str, Any]:
    month = Month.of(NOW, TZ).previous()
    received = [ReferralRecord(9, sample.second_referrer, NOW - timedelta(days=26),
                               "Alice, meet Erin", (
        PartyRecord(sample.referrer, "answered", Outcome.POSITIVE, NOW - timedelta(days=20)),
        PartyRecord(sample.second_other, "requested", None)))]
    summary = member_summary(sample.referrer, month, _records(sample), received, TZ)
    return {**_base(sample, sample.referrer, "monthly_summary"), "summary": summary}


def _network(sample: Sample) -> dict[str, Any]:
    month = Month.of(NOW, TZ).previous()
    unclear = [UnclearRecord(31, sample.second_other.email, "Let's see after the summer.",
                             NOW - timedelta(days=24), 2)]
    suppressed = [SuppressionRecord("old@gone.example", "bounce", NOW - timedelta(days=21),
                                    "550 5.1.1 user unknown"),
                  SuppressionRecord("done@studio.example", "optout", NOW - timedelta(days=9),
                                    "reply #88", "Please take me off this list, thanks."),
                  SuppressionRecord("annoyed@isp.example", "complaint", NOW - timedelta(days=12),
                                    "arf: abuse/complaint feedback report (RFC 5965)")]
    delivery = [DeliveryRecord(77, "feedback_request", "slow@server.example", "pending", 3,
                               "451 4.7.1 try again later", NOW - timedelta(days=23))]
    summary = network_summary(month, _records(sample), TZ, unclear=unclear,
                              suppressions=suppressed, delivery=delivery)
    return {**_base(sample, sample.operator, "network_summary"), "summary": summary}


def _confirmation(sample: Sample) -> dict[str, Any]:
    cancel = tk.plus_address(sample.address, tk.make_token(SECRET, 7, "c"))
    ctx = {**_base(sample, sample.referrer, "intro_confirmation"), **_first(sample)}
    ctx.update(parties=[sample.party, sample.other],
               parties_names=f"{sample.party.display} and {sample.other.display}",
               not_asked=[], not_asked_names="", intro_subject="Intro: José <> Carol",
               ask_on=_day(NOW + timedelta(days=3)), cancel_address=cancel,
               cancel_link=mailto(cancel, "cancel", "cancel"))
    return ctx


def _set_aside(sample: Sample) -> dict[str, Any]:
    ctx = _base(sample, sample.referrer, "set_aside_note")
    ctx.update(advice="the forwarded intro shows the people's names but not their addresses. "
               "Forward it as an attachment, or put us in Bcc on the intro itself.",
               their_subject="Fwd: Intro: José <> Carol", sent_from=sample.referrer.email)
    return ctx


def _alert(sample: Sample) -> dict[str, Any]:
    ctx = _base(sample, sample.operator, "operator_alert")
    ctx.update(alert={"cause": "signin", "severity": "critical",
                      "title": "Introloop cannot sign in to the mailbox",
                      "detail": "IMAP imap.gmail.com refused the login for "
                                "referrals@founders.example: invalid credentials",
                      "fix": "Run `introloop auth google` again, or check "
                             "INTROLOOP_IMAP_PASSWORD.",
                      "since": "2026-10-08 07:15 WEST", "items": ()},
               others=["No mail has arrived for 8 days"])
    return ctx


SAMPLES: dict[str, Callable[[Sample], dict[str, Any]]] = {
    "feedback_request": _party_mail("feedback_request", round=1),
    "reminder": _party_mail("reminder", reminder=1, last=True),
    "recheck": _party_mail("recheck", round=2),
    "pending_ack": _party_mail("pending_ack", recheck_on=_day(NOW + timedelta(days=14))),
    "thanks_positive": _party_mail("thanks_positive", outcome="positive"),
    "thanks_negative": _party_mail("thanks_negative", outcome="negative"),
    "optout_confirmation": _party_mail(
        "optout_confirmation", understood="Please don't send me these any more.",
        undo_address=tk.plus_address("referrals@founders.example",
                                     tk.make_token(SECRET, 41, "r")),
        undo_link=mailto(tk.plus_address("referrals@founders.example",
                                         tk.make_token(SECRET, 41, "r")),
                         "That is not what I meant", "That is not what I meant")),
    "combined_request": _combined,
    "appreciation": _member_mail("appreciation", REPLY_POSITIVE, "positive"),
    "lessons": _member_mail("lessons", REPLY_NEGATIVE, "negative"),
    "unclear_review": _unclear,
    "monthly_summary": _monthly,
    "network_summary": _network,
    "intro_confirmation": _confirmation,
    "operator_alert": _alert,
    "set_aside_note": _set_aside,
}
# Who each sample message goes to (for the .eml's To header)
_AUDIENCE = {"appreciation": "referrer", "lessons": "referrer", "unclear_review": "operator",
             "monthly_summary": "referrer", "intro_confirmation": "referrer",
             "network_summary": "operator", "operator_alert": "operator",
             "set_aside_note": "referrer"}


def sample_context(name: str, sample: Sample | None = None) -> dict[str, Any]:
    """The sample template context for message `name` (common variables only if unknown)."""
    sample = sample or Sample()
    build = SAMPLES.get(name)
    if build is None:
        ctx = {**_base(sample, sample.referrer, name), **_first(sample)}
    else:
        ctx = build(sample)
    ctx.update(sample.extra)
    return ctx


@dataclass
class Preview:
    """What `preview` wrote for one template."""

    name: str
    files: list[Path]
    subject: str = ""
    screenshots_skipped: str | None = None  # why there are no PNGs, when there are none


def render_sample(renderer: Renderer, name: str, sample: Sample | None = None
                  ) -> tuple[str, str, str, bytes]:
    """(subject, text, html, .eml bytes) of message `name` rendered with sample data.

    TemplateError names the template and, for a variable the sample lacks, says so.
    """
    sample = sample or Sample()
    ctx = sample_context(name, sample)
    try:
        rendered = renderer.render(name, ctx)
    except TemplateError as exc:
        if name not in SAMPLES and "undefined" in str(exc):
            raise TemplateError(f"{exc} (no sample data for {name!r} in service/preview.py "
                                "SAMPLES: only the common variables were given)") from None
        raise
    who = {"referrer": sample.referrer, "operator": sample.operator}.get(
        _AUDIENCE.get(name, ""), sample.party)
    asking = "choices" in ctx
    env = Envelope(
        sender=Person(sample.address, sample.network_name),
        to=who,
        message_id=stable_message_id(SECRET, f"preview:{name}", name, "founders.example"),
        date=NOW,
        reply_to=ctx.get("reply_address") if asking else None,
        unsubscribe=ctx.get("stop_address") if asking else None,
        references=("intro-7@martin-partners.example",) if asking else (),
    )
    msg = build_message(env, rendered.subject, rendered.text, rendered.html)
    return rendered.subject, rendered.text, rendered.html, msg.as_bytes(policy=policy.SMTP)


def write_preview(renderer: Renderer, name: str, out_dir: Path, *, sample: Sample | None = None,
                  screenshots: bool = True, browser: Any = None) -> Preview:
    """Write DIR/<name>.html/.txt/.eml and, when possible, phone and desktop PNGs.

    `browser` is a running `service.browser.Browser` to reuse across templates; without one,
    a Chromium is started for this template when it is available.
    """
    from service import browser as br

    out_dir.mkdir(parents=True, exist_ok=True)
    subject, text, html, eml = render_sample(renderer, name, sample)
    files = []
    for suffix, data in ((".html", html.encode()), (".txt", text.encode()), (".eml", eml)):
        path = out_dir / f"{name}{suffix}"
        path.write_bytes(data)
        files.append(path)
    result = Preview(name, files, subject)
    if not screenshots:
        result.screenshots_skipped = "not asked for (--no-screenshots)"
        return result
    missing = br.available() if browser is None else None
    if missing:
        result.screenshots_skipped = missing
        return result
    shots = [(f"{name}-phone.png", br.PHONE), (f"{name}-desktop.png", br.DESKTOP)]
    if browser is not None:
        for file, size in shots:
            files.append(browser.screenshot(html, out_dir / file, size))
    else:
        with br.browser() as b:
            for file, size in shots:
                files.append(b.screenshot(html, out_dir / file, size))
    return result

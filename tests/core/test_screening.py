"""The automatic-mail screen, rule by rule, on small hand-written .eml fixtures.

Fixtures live in tests/data/screening/. Each automatic one exercises one rule of the
table in service.core.screening; the ``human_*`` ones are replies and intros written by
people that mention vacations, out-of-office, bounces or guest lists and must pass.
"""

from __future__ import annotations

import email
import email.policy
import random
import re
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core import screening
from service.core.model import Evidence, Kind, Screening
from service.core.screening import RULES, screen, verp_outbox_id

DATA = Path(__file__).resolve().parents[1] / "data" / "screening"
OWN = ("referrals@network.example",)
DOMAIN = "network.example"


def load(name: str) -> tuple[EmailMessage, bytes]:
    raw = (DATA / name).read_bytes()
    return email.message_from_bytes(raw, policy=email.policy.default), raw


def run(name: str) -> Screening | None:
    msg, raw = load(name)
    return screen(msg, raw, own_addresses=OWN, own_domain=DOMAIN)


def make(headers: dict[str, str], body: str = "Hello.\n") -> tuple[EmailMessage, bytes]:
    lines = [f"{k}: {v}" for k, v in headers.items()]
    raw = ("\n".join(lines) + "\n\n" + body).encode("utf-8")
    return email.message_from_bytes(raw, policy=email.policy.default), raw


def run_made(headers: dict[str, str], body: str = "Hello.\n") -> Screening | None:
    msg, raw = make(headers, body)
    return screen(msg, raw, own_addresses=OWN, own_domain=DOMAIN)


BASE = {
    "From": "Pat Doe <pat@example.com>",
    "To": "referrals@network.example",
    "Subject": "Re: How did the introduction go?",
    "Content-Type": "text/plain",
}


# --------------------------------------------------------------------------- fixtures

# file, kind, rule, failed, permanent
AUTOMATIC = [
    ("dsn_hard_verp.eml", Kind.BOUNCE, "dsn", ("bob.stone@example.com",), True),
    ("dsn_delayed.eml", Kind.BOUNCE, "dsn", ("ann@slow.example",), False),
    ("dsn_mailbox_full.eml", Kind.BOUNCE, "dsn", ("carol@example.com",), False),
    ("dsn_success.eml", Kind.IGNORED, "dsn", (), False),
    ("exim_x_failed.eml", Kind.BOUNCE, "x-failed-recipients", ("dave@example.org",), True),
    ("qmail_failure.eml", Kind.BOUNCE, "flufl", ("erin@example.net",), True),
    ("ndr_text_german.eml", Kind.BOUNCE, "ndr-text", ("frank.weber@firma.example",), True),
    ("ses_bounce.eml", Kind.BOUNCE, "ses", ("gina@example.com",), True),
    ("verp_unparsed.eml", Kind.BOUNCE, "verp", (), True),
    ("mdn_read_receipt.eml", Kind.IGNORED, "mdn", (), False),
    ("mdn_sieve_reject.eml", Kind.BOUNCE, "mdn", ("ivy@example.com",), True),
    # the complainant: the To of our own mail attached to the report
    ("arf_complaint.eml", Kind.IGNORED, "arf", ("jack@isp.example",), False),
    ("challenge_boxbe.eml", Kind.AUTOREPLY, "challenge", (), False),
    ("auto_submitted.eml", Kind.AUTOREPLY, "auto-submitted", (), False),
    ("exchange_oof.eml", Kind.AUTOREPLY, "autoreply-subject", (), False),
    ("ooo_body_only_de.eml", Kind.AUTOREPLY, "autoreply-body", (), False),
    ("ooo_body_only_fr.eml", Kind.AUTOREPLY, "autoreply-body", (), False),
    ("ticket_ack.eml", Kind.AUTOREPLY, "autoreply-body", (), False),
    ("weak_signals.eml", Kind.AUTOREPLY, "autoreply-weak", (), False),
    ("null_sender.eml", Kind.AUTOREPLY, "null-sender", (), False),
    ("newsletter.eml", Kind.IGNORED, "bulk-hint", (), False),
    ("list_id.eml", Kind.IGNORED, "list", (), False),
    ("noreply_sender.eml", Kind.IGNORED, "noreply-sender", (), False),
    ("loop_header.eml", Kind.IGNORED, "loop", (), False),
    ("loop_minted_id.eml", Kind.IGNORED, "loop", (), False),
]


@pytest.mark.parametrize(("name", "kind", "rule", "failed", "permanent"), AUTOMATIC)
def test_automatic_fixture(
    name: str, kind: Kind, rule: str, failed: tuple[str, ...], permanent: bool
) -> None:
    got = run(name)
    assert got is not None, name
    assert (got.kind, got.reason.split(":", 1)[0]) == (kind, rule), got.reason
    assert got.failed == failed
    assert got.permanent is permanent
    assert "\n" not in got.reason


HUMAN = [
    "human_was_out_of_office.eml",  # "I was out of office last week, but the intro went great"
    "human_away_but_answers.eml",  # "I'm out of the office until Monday, but ... went great"
    "human_away_short.eml",  # "I'm away until Friday" in a reply to us, no responder cue
    "human_quoted_dsn.eml",  # a reply that quotes a Gmail bounce with '>'
    "human_outlook_quoted_ndr.eml",  # Outlook top-post over an NDR, no '>' quoting
    "human_forwarded_bounce.eml",  # a member forwarding a bounce: "Fwd: Undelivered ..."
    "human_guest_list.eml",  # "added her to the guest list", "click the link"
    "human_replies_to_autoreply.eml",  # "RE: Automatic reply: ..." written by a person
    "human_member_same_domain.eml",  # a member on the network's domain: not our Message-ID
    "human_reply_via_esp.eml",  # List-Unsubscribe from a CRM, but a reply to our request
    "human_autosvar_word.eml",  # mentions "autosvar" in prose
    "unsubscribe_apple.eml",  # Auto-Submitted, yet the person's own opt-out: passes on
]


@pytest.mark.parametrize("name", HUMAN)
def test_human_mail_passes(name: str) -> None:
    assert run(name) is None


def test_every_fixture_is_listed() -> None:
    listed = {row[0] for row in AUTOMATIC} | set(HUMAN)
    assert {p.name for p in DATA.glob("*.eml")} == listed


def test_verp_id_in_reason_and_helper() -> None:
    msg, _ = load("dsn_hard_verp.eml")
    assert verp_outbox_id(msg, OWN) == 42
    assert run("dsn_hard_verp.eml").reason.endswith("[outbox 42]")  # type: ignore[union-attr]
    # some MTAs uppercase the whole Delivered-To address
    msg, _ = load("verp_unparsed.eml")
    assert verp_outbox_id(msg, OWN) == 77
    # a +bounce- address of somebody else is not ours
    assert verp_outbox_id(msg, ("other@network.example",)) is None
    assert verp_outbox_id(load("human_away_short.eml")[0], OWN) is None


def test_dsn_fields_win_over_quoted_original() -> None:
    # the returned original mentions dave@example.net next to "550 5.1.1" and has a Cc;
    # only the DSN's recipient failed
    got = run("dsn_hard_verp.eml")
    assert got is not None and got.failed == ("bob.stone@example.com",)


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Auto-Submitted", "auto-generated"),
        ("Auto-Submitted", "auto-notified"),
        ("X-Autoreply", "yes"),
        ("X-Autorespond", "Out of office"),
        ("X-Autoresponder", "true"),
        ("Precedence", "auto_reply"),
        ("X-Precedence", "auto_reply"),
        ("X-Mailer", "vacation 1.2.7"),
    ],
)
def test_autoreply_headers(header: str, value: str) -> None:
    got = run_made({**BASE, header: value})
    assert got is not None and got.kind is Kind.AUTOREPLY, got


def test_auto_submitted_no_is_a_person() -> None:
    assert run_made({**BASE, "Auto-Submitted": "no"}) is None


def test_x_auto_response_suppress_alone_is_weak() -> None:
    # Outlook sets it on ordinary mail too; alone it proves nothing
    assert run_made({**BASE, "X-Auto-Response-Suppress": "All"}, "It went well.\n") is None
    got = run_made({**BASE, "X-Auto-Response-Suppress": "All", "Precedence": "bulk"})
    assert got is not None and got.reason.startswith("autoreply-weak:")


@pytest.mark.parametrize("value", ["bulk", "list", "junk"])
def test_precedence_bulk_is_a_bulk_hint(value: str) -> None:
    got = run_made({**BASE, "Precedence": value}, "Monthly digest.\n")
    assert got is not None and got.kind is Kind.IGNORED and got.reason.startswith("bulk-hint:")
    assert got.evidence is Evidence.HINT


def test_feedback_id_is_only_a_hint() -> None:
    # Fastmail and Proton stamp Feedback-ID on every message their users send
    got = run_made({**BASE, "Feedback-ID": "a:b:c:esp"})
    assert got is not None and got.reason.startswith("bulk-hint:")
    assert got.evidence is Evidence.HINT


def test_a_list_server_is_list_evidence_and_a_responder_stays_automatic() -> None:
    got = run_made({**BASE, "List-Id": "<team.lists.example>", "Feedback-ID": "x"})
    assert got is not None and got.rule == "list" and got.evidence is Evidence.LIST
    # a hint first, then proof: the proof wins (the strongest verdict is returned)
    got = run_made({**BASE, "Feedback-ID": "x", "Return-Path": "<>"})
    assert got is not None and got.rule == "null-sender" and got.evidence is Evidence.AUTOMATIC
    got = run_made({**BASE, "X-Auto-Response-Suppress": "All", "Precedence": "bulk"})
    assert got is not None and got.evidence is Evidence.HINT


@pytest.mark.parametrize(
    "sender",
    [
        "noreply@service.example",
        "no-reply@service.example",
        "donotreply@service.example",
        "do-not-reply@service.example",
        "MAILER-DAEMON@mx.example",
        "postmaster@example.com",
    ],
)
def test_noreply_and_daemon_senders_are_never_people(sender: str) -> None:
    got = run_made({**BASE, "From": sender, "Subject": "Your settings"}, "Settings saved.\n")
    assert got is not None and got.kind in (Kind.IGNORED, Kind.BOUNCE)


def test_loop_from_own_address() -> None:
    got = run_made({**BASE, "From": "Network <Referrals@Network.example>"})
    assert got is not None and got.reason.startswith("loop:")


# --------------------------------------------------------------------------- subjects


@pytest.mark.parametrize(
    "subject",
    [
        "Automatic reply: How did the introduction go?",
        "AUTO: Jane Doe is out of the office (returning 05/01/2026)",
        "Out of Office: How did the introduction go?",
        "Abwesenheitsnotiz: Wie lief die Vorstellung?",
        "Réponse automatique : Comment s'est passée la présentation ?",
        "Respuesta automática: ¿Qué tal la presentación?",
        "Automatisch antwoord: Hoe ging de introductie?",
        "Autosvar: How did the introduction go?",
        "Automatische Antwort: Wie lief die Vorstellung?",
        "Risposta automatica: com'è andata?",
        "[Ticket #48213] Re: How did the introduction go?",
        "Re: How did the introduction go? (Automatic Response)",
    ],
)
def test_autoreply_subjects(subject: str) -> None:
    got = run_made({**BASE, "Subject": subject}, "Thanks.\n")
    assert got is not None and got.kind is Kind.AUTOREPLY, subject


@pytest.mark.parametrize(
    "subject",
    [
        "Re: How did the introduction go?",
        "RE: Out of Office: How did the introduction go?",  # a person answering an OOO
        "AW: Abwesenheitsnotiz: Wie lief die Vorstellung?",
        "Intro: Ann <> Bob (I'm out of office next week)",
        "Re: Automated testing intro",
    ],
)
def test_subjects_people_write(subject: str) -> None:
    assert run_made({**BASE, "Subject": subject}, "It went well, thanks.\n") is None


# --------------------------------------------------------------------------- body only

NO_REPLY_SUBJECT = {**BASE, "Subject": "How did the introduction go?"}


@pytest.mark.parametrize(
    "body",
    [
        "I am out of the office until 12 May with limited access to email.\n",
        "I'm currently on annual leave, returning on 3 June. For urgent matters please "
        "contact office@example.com.\n",
        "Vielen Dank für Ihre Nachricht. Ich bin bis zum 14. Mai nicht im Büro.\n",
        "Je suis absente jusqu'au 2 juin. En cas d'urgence contactez Paul.\n",
        "Estoy fuera de la oficina hasta el 10 de junio. En caso de urgencia llame a Ana.\n",
        "Ik ben tot en met 5 juni afwezig. In dringende gevallen kunt u Jan bellen.\n",
        "This is an automated response. We will get back to you within 2 business days.\n",
        "Your ticket has been received. Reference: [Ticket #123]\n",
        "This mailbox is no longer monitored. Please write to team@example.com.\n",
    ],
)
def test_body_only_autoreplies(body: str) -> None:
    got = run_made(NO_REPLY_SUBJECT, body)
    assert got is not None and got.kind is Kind.AUTOREPLY, body


def test_body_only_in_a_reply_needs_a_responder_cue() -> None:
    # same words, in a "Re:" to us: a person may write this...
    assert run_made(BASE, "I'm away until Friday, will write properly then.\n") is None
    # ...but not this
    got = run_made(BASE, "I am away until Friday. For urgent matters please contact Sam.\n")
    assert got is not None and got.kind is Kind.AUTOREPLY


@pytest.mark.parametrize(
    "body",
    [
        "I was out of office last week, but the intro went great.\n",
        "I'm out of the office until Monday, but quickly: the intro went great!\n",
        "Ich bin bis Montag nicht im Büro, aber: wir haben uns kennengelernt, danke!\n",
        "We met on Tuesday. I am travelling until Friday, more then.\n",
        "Great intro. Out of office vibes here, but we talked already.\n",
        # long human text that happens to contain an out-of-office sentence further down
        "Thanks so much for connecting me with Bob. " * 30 + "I am away until May.\n",
    ],
)
def test_people_mentioning_absence_pass(body: str) -> None:
    assert run_made(NO_REPLY_SUBJECT, body) is None
    assert run_made(BASE, body) is None


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\n\n\n",
        b"From: \nTo: \nSubject: \n\n",
        b"From: <>\nSubject: =?x-unknown?q?=FF?=\n"
        b"Content-Type: text/plain; charset=x-unknown\n\n\xff\xfe",
        b'From: "unterminated <a@b\nTo: ,,,@@@\nContent-Type: multipart/report\n\n--\n',
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n"
        b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
        b"!!!!\n--x--\n",
        b"Subject: \xc3\x28\xa0\xa1\nFrom: Jos\xe9 <j@x>\n\nbody",
        b"Content-Type: message/rfc822\n\nContent-Type: message/rfc822\n\n" * 50,
        # inputs that once made address and line patterns backtrack quadratically
        b"From: a@b.example\nTo: " + b"a" * 30000 + b"\nSubject: x\n\nhi\n",
        b"From: MAILER-DAEMON@x.example\nSubject: Undeliverable\n\n" + b"\n" * 40000,
    ],
)
def test_broken_messages_never_raise(raw: bytes) -> None:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    result = screen(msg, raw, own_addresses=OWN, own_domain=DOMAIN)
    assert result is None or isinstance(result, Screening)


def test_leading_blank_line_is_reparsed() -> None:
    # some exports start with an empty line, which hides every header from the parser
    _, raw = load("exim_x_failed.eml")
    raw = b"\n" + raw
    got = screen(email.message_from_bytes(raw, policy=email.policy.default), raw, own_addresses=OWN)
    assert got is not None and got.kind is Kind.BOUNCE


def test_compat32_message_is_accepted() -> None:
    _, raw = load("dsn_hard_verp.eml")
    got = screen(email.message_from_bytes(raw), raw, own_addresses=OWN)  # type: ignore[arg-type]
    assert got is not None and got.failed == ("bob.stone@example.com",)


def test_rule_table_is_documented_in_order() -> None:
    names = [rule.name for rule in RULES]
    assert len(names) == len(set(names))
    table = re.findall(r"^ (\d+)\s+(\S+)\s", screening.__doc__ or "", re.M)
    assert [int(n) for n, _ in table] == list(range(1, len(names) + 1))
    assert [name for _, name in table] == names


SEEDS = sorted(DATA.glob("*.eml"))


def _mutate(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.randint(1, 12)):
        op = rnd.randrange(5)
        pos = rnd.randrange(len(out) + 1)
        if op == 0 and out:  # flip a byte
            out[min(pos, len(out) - 1)] = rnd.randrange(256)
        elif op == 1:  # insert junk, often header-like
            out[pos:pos] = rnd.choice(
                [
                    b"\n",
                    b"\r\n",
                    b": ",
                    b"=?utf-8?q?=FF?=",
                    b"--",
                    b"\nContent-Type: multipart/report; boundary=\n",
                    b"\x00",
                    b"\xff\xfe",
                    b"<>",
                    b"@",
                ]
            )
        elif op == 2:  # truncate
            del out[pos:]
        elif op == 3:  # duplicate a slice
            end = min(len(out), pos + rnd.randrange(200))
            out[pos:pos] = out[pos:end]
        else:  # delete a slice
            del out[pos : pos + rnd.randrange(50)]
    return bytes(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), salt=st.integers(min_value=0, max_value=2**32))
def test_mutated_fixtures_never_raise(seed: Path, salt: int) -> None:
    raw = _mutate(seed.read_bytes(), random.Random(salt))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    result = screen(msg, raw, own_addresses=OWN, own_domain=DOMAIN)
    assert result is None or isinstance(result, Screening)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=3000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    result = screen(msg, raw, own_addresses=OWN, own_domain=DOMAIN)
    assert result is None or isinstance(result, Screening)


def _arf(original_from: str, extra_fields: str = "") -> Screening | None:
    body = (
        "--f\nContent-Type: text/plain\n\nAbuse report.\n\n"
        "--f\nContent-Type: message/feedback-report\n\n"
        f"Feedback-Type: abuse\nVersion: 1\n{extra_fields}\n"
        "--f\nContent-Type: text/rfc822-headers\n\n"
        f"From: {original_from}\nTo: Dana <dana@isp.example>\nSubject: Hello\n\n--f--\n"
    )
    return run_made(
        {
            "From": "fbl@isp.example",
            "To": "referrals@network.example",
            "Subject": "Abuse report",
            "MIME-Version": "1.0",
            "Content-Type": 'multipart/report; report-type=feedback-report; boundary="f"',
        },
        body,
    )


def test_a_complaint_names_the_complainant_only_when_it_is_about_our_mail() -> None:
    # Someone else's mail attached to a report: its To is not our party, never suppressed.
    other = _arf("Someone <someone@elsewhere.example>")
    assert other is not None and other.kind is Kind.IGNORED and other.failed == ()
    ours = _arf("Test Network <referrals@network.example>")
    assert ours is not None and ours.failed == ("dana@isp.example",)
    # ARF's own field names the complainant even when the original is redacted
    named = _arf("redacted", "Original-Rcpt-To: <Eve@Example.org>\n")
    assert named is not None and named.failed == ("eve@example.org",)

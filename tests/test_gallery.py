"""The gallery of real clients (tests/data/clients/) through the whole loop.

Each directory holds an intro and a reply as one mail client, provider or gateway writes them
(Gmail, Outlook in five languages, Apple Mail, Fastmail, Proton, GMX, Mimecast, ...), decoys
that must never become referrals or be answered, and `case.toml` with what a careful person
expects. README.md there says where each shape comes from. The embedded loop (SQLite,
Maildir, frozen clock) reads them:

* the intro becomes one referral with the right parties (addresses and names);
* the party's reply, written against our real request (its Reply-To token, Message-ID,
  subject and text are filled into the template), is matched to that party, read with the
  right outcome, and keeps no banner, rewritten link, quoted request or signature;
* each decoy is set aside as the kind it is, creates no referral and sends nothing.

A property test then mutates the headers of every gallery reply (bulk hints, list headers,
ESP mailers) and checks that a reply carrying our token is never ignored.
"""

from __future__ import annotations

import html
import tomllib
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from service.adapters.local import MaildirMailbox
from service.adapters.tables import Inbound, Outbox, Party, Referral, Reply
from service.app import FrozenClock, build_loop
from service.config import load_settings
from service.core.intro import Senders
from service.core.model import Classification, Kind, Outcome
from service.core.outgoing import stable_message_id
from service.core.quote import answer_of
from service.core.reader import ReadContext, read_bytes
from service.core.tokens import make_token, plus_address
from service.loop import Loop
from service.queries import add_member

CLIENTS = Path(__file__).parent / "data" / "clients"
CASES = sorted(p.parent for p in CLIENTS.glob("*/case.toml"))
# Replies the classifier hands to a person instead of deciding (never decided wrongly). Kept
# strict, so a change that reads one of them, or loses another, shows up here.
HANDED_OFF = {
    # "Wir hatten ein gutes Gespräch, haben uns aber für die Kanzlei entschieden, die uns
    # schon … begleitet hat": the incumbent won; the rule says negative, the model (thanks,
    # "gutes Gespräch") positive at 0.65, so a person decides
    "outlook-win-de": "negative",
}
START = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
SERVICE = "referrals@network.example"


def _case(path: Path) -> dict[str, Any]:
    with (path / "case.toml").open("rb") as fh:
        return tomllib.load(fh)


def _norm(text: str) -> str:
    return " ".join(text.split())


def fill(template: bytes, request: Outbox) -> bytes:
    """The reply template with our real request's address, ids, subject and text in it."""
    msg = message_from_bytes(request.raw, policy=policy.default)
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    values = {
        "{{REPLY_TO}}": str(msg["Reply-To"]),
        "{{REQUEST_MESSAGE_ID}}": f"<{request.message_id}>",
        "{{REQUEST_SUBJECT}}": request.subject,
        "{{REQUEST_DATE}}": str(msg["Date"]),
        "{{QUOTED_GT}}": "\n".join("> " + line if line else ">" for line in text.splitlines()),
        "{{QUOTED_PLAIN}}": text,
        "{{QUOTED_HTML}}": html.escape(text).replace("\n", "<br>\n"),
    }
    out = template.decode("utf-8", "surrogateescape")
    for key, value in values.items():
        out = out.replace(key, value)
    # the templates use LF or CRLF; a QUOTED_* value brings LF lines: make them all CRLF
    out = out.replace("\r\n", "\n").replace("\n", "\r\n")
    return out.encode("utf-8", "surrogateescape")


class World:
    """One embedded Introloop for one gallery case."""

    def __init__(self, tmp: Path, case: dict[str, Any]):
        st_ = load_settings(None, {
            "address": SERVICE, "network_name": "Test Network",
            "operator": "ops@network.example", "secret": "g" * 32, "data_dir": tmp,
            "database_url": None, "imap_host": None, "smtp_host": None,
            "feedback_delay": "3d", "reminder_delay": "4d", "max_reminders": 1,
            "pending_recheck": "14d", "timezone": "UTC", "quiet_hours": "",
            "allow_senders": "",
        })
        self.clock = FrozenClock(START)
        self.loop: Loop = build_loop(st_, clock=self.clock)
        member = case["member"]
        add_member(st_, member["email"], member.get("name", ""), None,
                   tuple(member.get("aliases", ())))

    def deliver(self, raw: bytes) -> Any:
        assert isinstance(self.loop.mailbox, MaildirMailbox)
        self.loop.mailbox.deliver(raw)
        return self.loop.run_once()

    def rows(self, table: Any) -> list[Any]:
        with self.loop.session() as s:
            return list(s.exec(select(table).order_by(table.id)))


@pytest.fixture(scope="module", params=CASES, ids=[p.name for p in CASES])
def played(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Any]:
    """Play one case through the loop once; the tests below check what happened."""
    path: Path = request.param
    case = _case(path)
    world = World(tmp_path_factory.mktemp(path.name), case)
    intro = world.deliver((path / case["intro"]["file"]).read_bytes())
    referrals = world.rows(Referral)
    parties = world.rows(Party)
    world.clock.advance(timedelta(days=3))
    world.loop.run_once()
    who = case["reply"]["from"].lower()
    asked = [o for o in world.rows(Outbox) if o.kind == "feedback_request"]
    request_row = next((o for o in asked if o.to_email == who), None)
    out: dict[str, Any] = {"path": path, "case": case, "world": world, "intro": intro,
                           "referrals": referrals, "parties": parties, "request": request_row}
    if request_row is None:
        return out
    world.clock.advance(timedelta(hours=5))
    raw = fill((path / case["reply"]["file"]).read_bytes(), request_row)
    out["reply_raw"] = raw
    out["reply_pass"] = world.deliver(raw)
    out["replies"] = world.rows(Reply)
    decoys = []
    for decoy in case.get("decoys", []):
        before = len(world.rows(Outbox))
        referrals_before = len(world.rows(Referral))
        world.deliver(fill((path / decoy["file"]).read_bytes(), request_row))
        row = world.rows(Inbound)[-1]
        decoys.append((decoy, row, len(world.rows(Outbox)) - before,
                       len(world.rows(Referral)) - referrals_before))
    out["decoys"] = decoys
    return out


def test_the_intro_becomes_the_right_referral(played: dict[str, Any]) -> None:
    case = played["case"]
    kinds = [k for _, k, _ in played["intro"].processed]
    assert kinds == ["intro"], played["intro"].processed
    assert len(played["referrals"]) == 1
    assert played["referrals"][0].referrer_email == case["member"]["email"].lower()
    want = {p["email"].lower(): p.get("name", "") for p in case["intro"]["parties"]}
    got = {p.email: p.name for p in played["parties"]}
    assert set(got) == set(want)
    for email, name in want.items():
        if name:  # names as written, without a gateway's [EXTERNAL]
            assert got[email] == name, (email, got[email])
    subject = played["referrals"][0].subject
    assert "[EXTERNAL]" not in subject.upper() and "[EXT]" not in subject.upper()


def test_the_reply_is_matched_and_read(played: dict[str, Any]) -> None:
    case, reply = played["case"], played["case"]["reply"]
    assert played["request"] is not None, "no feedback request went to " + reply["from"]
    kinds = [k for _, k, _ in played["reply_pass"].processed]
    assert kinds == ["reply"], played["reply_pass"].processed
    rows = played["replies"]
    assert len(rows) == 1 and rows[0].party_id == played["request"].party_id
    want = "unclear" if played["path"].name in HANDED_OFF else reply["outcome"]
    assert rows[0].outcome == want, (rows[0].rule, rows[0].text)
    assert case["client"]


def test_the_reply_text_is_clean(played: dict[str, Any]) -> None:
    reply = played["case"]["reply"]
    text = played["replies"][0].text
    for bad in reply.get("must_not_contain", []):
        assert bad.lower() not in text.lower(), (bad, text)
    for bad in ("urldefense", "safelinks.protection", "CAUTION:", "Test Network wrote",
                "How did it go?"):
        assert bad not in text, (bad, text)
    assert _norm(reply["quote"]) in _norm(text)


def test_the_quote_is_the_answer_alone(played: dict[str, Any]) -> None:
    assert _norm(answer_of(played["replies"][0].text)) == _norm(played["case"]["reply"]["quote"])


def test_decoys_never_become_referrals_or_get_answers(played: dict[str, Any]) -> None:
    for decoy, row, new_mail, new_referrals in played["decoys"]:
        # a quarantine digest stamped Auto-Submitted is an auto-reply or ignored mail: either
        # way never a person's; a bounce must be read as one (it stops mail to the address)
        assert row.kind in ("autoreply", "ignored", "bounce"), (decoy["file"], row.reason)
        if decoy["expect"] == "bounce":
            assert row.kind == "bounce", (decoy["file"], row.reason)
        assert new_referrals == 0, decoy["file"]
        assert new_mail == 0, (decoy["file"], row.reason)


def test_the_gallery_is_large_and_documented() -> None:
    assert len(CASES) >= 25
    readme = (CLIENTS / "README.md").read_text(encoding="utf-8")
    for path in CASES:
        assert path.name in readme, path.name
    assert sum(len(_case(p).get("decoys", [])) for p in CASES) >= 10


# --- the property: a token-carrying reply is never ignored, whatever headers it carries -------

SECRET = b"p" * 32
_CTX = ReadContext(SERVICE, Senders.build([]),
                   lambda _t: Classification(Outcome.UNCLEAR, 0.0, "test"), secret=SECRET)


def _token_reply(path: Path) -> bytes:
    """A gallery reply filled in with a valid token and a reference to our own request."""
    case = _case(path)
    token = make_token(SECRET, 42)
    mid = stable_message_id(SECRET, "request:42:1", "feedback_request", "network.example")
    values = {"{{REPLY_TO}}": plus_address(SERVICE, token),
              "{{REQUEST_MESSAGE_ID}}": f"<{mid}>",
              "{{REQUEST_SUBJECT}}": "How did your introduction to Carol Diaz go?",
              "{{REQUEST_DATE}}": "Thu, 08 Oct 2026 09:00:00 +0000",
              "{{QUOTED_GT}}": "> How did it go?", "{{QUOTED_PLAIN}}": "How did it go?",
              "{{QUOTED_HTML}}": "How did it go?"}
    out = (path / case["reply"]["file"]).read_bytes().decode("utf-8", "surrogateescape")
    for key, value in values.items():
        out = out.replace(key, value)
    return out.encode("utf-8", "surrogateescape")


REPLIES = [_token_reply(p) for p in CASES]
WEAK = st.sampled_from([
    ("Feedback-ID", "1:2:3:esp"), ("List-Unsubscribe", "<mailto:u@esp.example>"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"), ("Precedence", "bulk"),
    ("Precedence", "list"), ("Precedence", "junk"), ("X-Mailer", "Mailchimp Mandrill"),
    ("X-Mailer", "SendGrid"), ("X-Auto-Response-Suppress", "All"), ("List-Id", "<a.b.example>"),
    ("List-Post", "<mailto:list@lists.example>"), ("X-Campaign-Id", "77"),
    ("X-MC-User", "abc"), ("X-SES-Outgoing", "2026.10.08"), ("X-Spam-Flag", "YES"),
    ("X-Report-Abuse", "Please report abuse"), ("X-CSA-Complaints", "csa@esp.example"),
])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(min_value=0, max_value=max(0, len(REPLIES) - 1)),
       extra=st.lists(WEAK, max_size=6))
def test_a_token_reply_from_any_gallery_client_is_never_ignored(index: int,
                                                                extra: list) -> None:
    raw = REPLIES[index]
    head = "".join(f"{k}: {v}\r\n" for k, v in extra).encode()
    reading = read_bytes(head + raw, _CTX)
    assert reading.kind is Kind.REPLY, (CASES[index].name, extra, reading.reason)
    # two clients write to the plain address and keep only References: proof enough
    assert (reading.tokens and reading.tokens[0].id == 42) or reading.our_references

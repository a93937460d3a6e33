"""Nothing lost, nothing raised: malformed and mutated messages through the reader and the loop.

Seeds are our own fixtures (intros, replies, screening) and, when ../shared/corpus is present,
a fixed sample of its real-world messages. Hypothesis mutates them (truncation, byte noise,
hostile headers, broken MIME, line-ending damage, nesting) and checks:

* `read_bytes` always returns a Reading with a kind and a one-line reason;
* `Loop.process_one` always returns a verdict, or quarantines the message with a one-line
  reason and its exact raw bytes kept.

Examples are bounded and derandomized so the suite stays fast and every run checks the same
cases; raise `max_examples` locally to search further.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from service.adapters.tables import Inbound
from service.app import FrozenClock, build_loop
from service.config import load_settings
from service.core.intro import Member, Senders
from service.core.model import Classification, Kind, Outcome
from service.core.reader import ReadContext, Reading, read_bytes
from service.ports import RawMail
from service.queries import add_member

TESTS = Path(__file__).resolve().parent
CORPUS = TESTS.parents[1] / "shared" / "corpus"
KINDS = {k.value for k in Kind}


def _seeds() -> list[bytes]:
    files = sorted((TESTS / "data" / "intros").glob("*.eml"))
    files += sorted((TESTS / "data" / "screening").glob("*.eml"))[::3]
    files += sorted((TESTS / "data" / "replies").glob("*.eml"))[::3]
    if (CORPUS / "index.tsv").is_file():
        with (CORPUS / "index.tsv").open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        files += [CORPUS / r["path"] for r in rows[::40]]  # a fixed spread over every source
    return [f.read_bytes()[:200_000] for f in files if f.is_file()]


SEEDS = _seeds()

HOSTILE_HEADERS = [
    b"Content-Type: multipart/mixed; boundary=",
    b'Content-Type: multipart/alternative; boundary="x"',
    b"Content-Type: message/rfc822",
    b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Type: text/plain; charset=x-no-such-charset",
    b"Content-Type: text/html; charset=utf-7",
    b"From: =?x-bogus?B?////?= <alice@example.com>",
    b"From: alice@example.com, bob@acme.example",
    b"From: <>",
    b"From: \"Alice\" <alice@example.com",
    b"To: <>,,;;@@, =?utf-8?q?=FF?= <a@b>",
    b"To: " + b", ".join(b"p%d@x%d.example" % (i, i) for i in range(60)),
    b"Cc: undisclosed-recipients:;",
    b"Subject: =?utf-8?q?=FF=FE=00?=",
    b"Subject: Fwd: " + b"A" * 5000,
    b"Message-ID: <>",
    b"Message-ID: <a@b> <c@d>",
    b"In-Reply-To: <feedback-request.0123456789abcdef01234567@network.example>",
    b"To: referrals+1cabcdefghij@network.example",
    b"Auto-Submitted: auto-replied",
    b"Authentication-Results: mx.network.example; dkim=pass header.d=",
    b"Authentication-Results: mx.network.example; dmarc=fail header.from=example.com",
    b"Authentication-Results: ;;;=",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=x; b=; bh=",
    b"X-Broken-\x00-Name: value",
    b"Date: not a date at all",
    b"\xff\xfe\xfd: \x80\x81",
]
FROM_ALICE = b"From: Alice Martin <alice@example.com>\r\nTo: bob@acme.example, c@studio.example\r\n"


def _apply(raw: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    for op, at, data in ops:
        pos = at % (len(raw) + 1)
        if op == "truncate":
            raw = raw[:pos]
        elif op == "insert":
            raw = raw[:pos] + data + raw[pos:]
        elif op == "overwrite":
            raw = raw[:pos] + data + raw[pos + len(data):]
        elif op == "header":
            raw = data + b"\r\n" + raw
        elif op == "no_separator":
            raw = raw.replace(b"\r\n\r\n", b"\r\n", 1).replace(b"\n\n", b"\n", 1)
        elif op == "line_endings":
            raw = raw.replace(b"\r\n", b"\n").replace(b"\n", [b"\r", b"\n", b"\r\r\n"][at % 3])
        elif op == "nest":
            raw = (FROM_ALICE + b"Subject: Fwd: x\r\nContent-Type: multipart/mixed; boundary=B"
                   b"\r\n\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n" + raw + b"\r\n--B--\r\n")
        elif op == "as_alice":
            raw = FROM_ALICE + raw
    return raw[:400_000]


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(b"")),
        st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=40)),
        st.tuples(st.just("overwrite"), st.integers(0, 1 << 20),
                  st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("header"), st.just(0), st.sampled_from(HOSTILE_HEADERS)),
        st.tuples(st.just("no_separator"), st.just(0), st.just(b"")),
        st.tuples(st.just("line_endings"), st.integers(0, 2), st.just(b"")),
        st.tuples(st.just("nest"), st.just(0), st.just(b"")),
        st.tuples(st.just("as_alice"), st.just(0), st.just(b"")),
    ),
    min_size=1,
    max_size=4,
)
MESSAGES = st.one_of(
    st.builds(_apply, st.sampled_from(SEEDS), OPS),
    st.binary(max_size=300),  # and plain garbage
)


def _unclear(_text: str) -> Classification:
    return Classification(Outcome.UNCLEAR, 0.0, "test")


CTX = ReadContext(
    "referrals@network.example",
    Senders.build([Member("alice@example.com", "Alice Martin", ("alice.private@gmail.example",))],
                  ["*"]),  # everyone may introduce: every intro path is exercised
    _unclear,
    secret=b"s" * 32,
    trusted_authserv_ids=("mx.network.example",),
)


def _check_reading(r: Reading) -> None:
    assert isinstance(r, Reading)
    assert r.kind.value in KINDS
    assert isinstance(r.reason, str) and r.reason.strip()
    assert "\n" not in r.reason and "Traceback" not in r.reason
    if r.kind is Kind.INTRO:
        assert len(r.parties) >= 2 and r.referrer is not None
        assert all(p.email == p.email.lower() and "@" in p.email for p in r.parties)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(MESSAGES)
def test_reader_always_returns_a_verdict(raw: bytes) -> None:
    _check_reading(read_bytes(raw, CTX))


def test_every_seed_reads_cleanly() -> None:
    assert len(SEEDS) >= 40
    for raw in SEEDS:
        _check_reading(read_bytes(raw, CTX))


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("property")
    cfg = load_settings(None, {
        "address": "referrals@network.example", "network_name": "Test Network",
        "operator": "ops@network.example", "secret": "x" * 32, "data_dir": tmp,
        "database_url": None, "imap_host": None, "smtp_host": None, "allow_senders": "*",
        "trusted_authserv_id": "mx.network.example", "confirm_intros": True,
    })
    built = build_loop(cfg, clock=FrozenClock(datetime(2026, 10, 5, 9, 0, tzinfo=UTC)))
    add_member(cfg, "alice@example.com", "Alice Martin", None, ("alice.private@gmail.example",))
    return built


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(MESSAGES)
def test_the_loop_keeps_every_message_and_never_raises(loop, raw: bytes) -> None:
    if not loop.store_raw(RawMail(raw, "test", "INBOX")):
        return  # the same bytes again: already kept
    with loop.session() as s:
        row = s.exec(select(Inbound).order_by(Inbound.id.desc())).first()  # type: ignore[union-attr]
        assert row is not None and row.raw == raw
        inbound_id = row.id
    kind, reason = loop.process_one(inbound_id)
    assert kind in KINDS | {"quarantined"}, (kind, reason)
    assert reason.strip() and "\n" not in reason
    with loop.session() as s:
        row = s.get(Inbound, inbound_id)
        assert row is not None and row.raw == raw
        assert row.status == ("quarantined" if kind == "quarantined" else "processed")
        assert row.reason and "\n" not in row.reason


def test_nothing_was_quarantined(loop) -> None:
    """Runs after the property test (file order): the reader handled every mutation itself."""
    with loop.session() as s:
        stuck = [(r.id, r.reason) for r in s.exec(
            select(Inbound).where(Inbound.status == "quarantined"))]
    assert stuck == []

"""Hostile input through the whole processing path (store → claim → read → decide → outbox).

Oversized messages (kept in quarantine, never parsed), deeply nested MIME, invalid charsets and
headers, forged reply tokens, a flood from one sender, and a hypothesis fuzz test over mutated
messages of the shared corpus (skipped when ../shared/corpus is absent). The property every
test keeps: the worker never crashes, every message ends `processed` or `quarantined` with a
reason, and nobody who is not part of a genuine conversation gets mail.
"""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from service.adapters.local import MaildirMailbox
from service.adapters.tables import Inbound, Outbox, Party, Referral
from service.app import FrozenClock, build_loop
from service.config import load_settings
from service.core import tokens as tk
from service.loop import Loop
from service.queries import add_member, requeue_inbound

START = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
MEMBER = "alice@example.com"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def make_loop(tmp: Path, **over: Any) -> Loop:
    values = {
        "address": "referrals@network.example", "network_name": "Test Network",
        "operator": "ops@network.example", "secret": "x" * 32, "data_dir": tmp,
        "database_url": None, "imap_host": None, "smtp_host": None,
        "feedback_delay": "0s", "timezone": "UTC", "quiet_hours": "", "allow_senders": "",
        "party_weekly_cap": 0,
    }
    values.update(over)
    st_ = load_settings(None, values)
    add_member(st_, MEMBER, "Alice Martin", None, ())
    return build_loop(st_, clock=FrozenClock(START))


def deliver(loop: Loop, raw: bytes | str) -> None:
    assert isinstance(loop.mailbox, MaildirMailbox)
    loop.mailbox.deliver(raw.encode() if isinstance(raw, str) else raw)


def rows(loop: Loop) -> list[Inbound]:
    with loop.session() as s:
        return list(s.exec(select(Inbound).order_by(Inbound.id)))


def intro(n: int, sender: str = MEMBER, extra: str = "") -> str:
    return (f"From: {sender}\r\nTo: bob{n}@acme.example, carol{n}@studio.example\r\n"
            f"Subject: Intro {n}\r\nMessage-ID: <h-{n}@example.com>\r\n{extra}"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nBob, meet Carol.\r\n")


# ----------------------------------------------------------------------------- size


def test_oversized_message_is_kept_in_quarantine_unparsed(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    loop = make_loop(tmp_path, max_message_bytes="4KB")
    parsed: list[int] = []
    import service.inbound as inbound

    real = inbound.parse_message
    monkeypatch.setattr(inbound, "parse_message", lambda raw: parsed.append(len(raw)) or real(raw))
    big = intro(1).replace("Bob, meet Carol.", "Bob, meet Carol. " + "x" * 10_000)
    deliver(loop, big)
    deliver(loop, intro(2))
    report = loop.run_once()
    first, second = rows(loop)
    assert first.status == "quarantined" and "INTROLOOP_MAX_MESSAGE_BYTES" in (first.reason or "")
    assert first.raw == big.encode()  # kept whole, for the operator
    assert second.status == "processed" and second.kind == "intro"
    assert all(n < 4000 for n in parsed)  # the big one was never parsed
    assert [p[1] for p in report.processed] == ["intro"]
    # raising the limit and retrying reads it
    loop2 = make_loop(tmp_path, max_message_bytes="1MB")
    requeue_inbound(loop2, first.id)  # type: ignore[arg-type]
    assert loop2.process_one(first.id)[0] == "intro"  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- structure


def nested(depth: int) -> str:
    """An intro whose text sits at the bottom of `depth` nested multiparts."""
    head = (f"From: {MEMBER}\r\nTo: bob@acme.example, carol@studio.example\r\n"
            f"Subject: Nested {depth}\r\nMessage-ID: <nest-{depth}@example.com>\r\n"
            "MIME-Version: 1.0\r\n")
    parts, tail = [], []
    for i in range(depth):
        parts.append(f"Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
        tail.append(f"\r\n--b{i}--\r\n")
    body = "Content-Type: text/plain\r\n\r\nBob, meet Carol.\r\n"
    return head + "".join(parts) + body + "".join(reversed(tail))


@pytest.mark.parametrize("depth", [30, 300, 3000])
def test_deeply_nested_mime_neither_crashes_nor_hangs(tmp_path: Path, depth: int) -> None:
    loop = make_loop(tmp_path)
    deliver(loop, nested(depth))
    deliver(loop, intro(1))
    t0 = time.monotonic()
    loop.run_once()
    elapsed = time.monotonic() - t0
    got = rows(loop)
    assert {r.status for r in got} <= {"processed", "quarantined"}
    assert got[1].kind == "intro"  # the next message is unaffected
    assert all(r.reason for r in got)
    print(f"depth {depth}: {got[0].status} {got[0].kind} in {elapsed:.2f} s")


BAD = {
    "unknown charset": ("Content-Type: text/plain; charset=x-no-such-charset\r\n\r\n"
                        "Bob, meet Carol \xe9\xff.\r\n"),
    "bad base64": ("Content-Type: text/plain; charset=utf-8\r\n"
                   "Content-Transfer-Encoding: base64\r\n\r\n!!!not*base64===\r\n"),
    "broken encoded word": ("Subject: =?utf-8?B?////?= =?x-bogus?Q?=ZZ?=\r\n"
                            "Content-Type: text/plain\r\n\r\nBob, meet Carol.\r\n"),
    "8-bit headers": ("X-Note: caf\xe9 \xff\xfe\r\nContent-Type: text/plain\r\n\r\n"
                      "Bob, meet Carol.\r\n"),
    "header without colon": ("This is no header\r\nContent-Type: text/plain\r\n\r\n"
                             "Bob, meet Carol.\r\n"),
    "endless header": ("X-Long: " + "a" * 200_000 + "\r\nContent-Type: text/plain\r\n\r\n"
                       "Bob, meet Carol.\r\n"),
    "many recipients": ("Cc: " + ", ".join(f"p{i}@x.example" for i in range(3000)) +
                        "\r\nContent-Type: text/plain\r\n\r\nAll of you, meet.\r\n"),
    "boundary never closed": ('Content-Type: multipart/alternative; boundary="zz"\r\n\r\n'
                              "--zz\r\nContent-Type: text/plain\r\n\r\nBob, meet Carol.\r\n"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_charsets_and_headers(tmp_path: Path, case: str) -> None:
    loop = make_loop(tmp_path)
    raw = (f"From: {MEMBER}\r\nTo: bob@acme.example, carol@studio.example\r\n"
           f"Message-ID: <bad-{abs(hash(case))}@example.com>\r\n" + BAD[case])
    deliver(loop, raw.encode("latin-1"))
    loop.run_once()
    (row,) = rows(loop)
    assert row.status in ("processed", "quarantined") and row.reason
    with loop.session() as s:
        to = {o.to_email for o in s.exec(select(Outbox))}
    # whatever was understood, mail only goes to people the member introduced
    assert to <= {"bob@acme.example", "carol@studio.example", MEMBER}


# ----------------------------------------------------------------------------- tokens


def test_forged_reply_tokens_change_nothing(tmp_path: Path) -> None:
    loop = make_loop(tmp_path)
    deliver(loop, intro(1))
    loop.run_once()
    with loop.session() as s:
        bob = s.exec(select(Party).where(Party.email == "bob1@acme.example")).one()
    good = tk.make_token(loop.secret, bob.id, "p")  # type: ignore[arg-type]
    forged = [
        tk.make_token(b"another-secret-0123456789abcdef", bob.id, "p"),  # type: ignore[arg-type]
        good[:-2] + ("aa" if not good.endswith("aa") else "bb"),  # signature tampered
        tk.make_token(loop.secret, 999, "p"),  # a party that does not exist
        "x" * 300,
    ]
    for i, token in enumerate(forged):
        deliver(loop, f"From: mallory@evil.example\r\nTo: referrals+{token}@network.example\r\n"
                      f"Subject: stop\r\nMessage-ID: <forged-{i}@evil.example>\r\n\r\nStop.\r\n")
    before = _state(loop)
    loop.run_once()
    assert _state(loop) == before
    with loop.session() as s:
        assert not [o for o in s.exec(select(Outbox)) if "evil" in o.to_email]


def _state(loop: Loop) -> list[tuple[str, str, int]]:
    with loop.session() as s:
        return [(p.email, p.status, p.rounds) for p in s.exec(select(Party).order_by(Party.id))]


# ----------------------------------------------------------------------------- flood


def test_a_flood_from_one_sender_is_rate_limited(tmp_path: Path) -> None:
    loop = make_loop(tmp_path, sender_hourly_limit=5)
    for i in range(12):
        deliver(loop, intro(i))
    loop.run_once()
    got = rows(loop)
    assert [r.status for r in got].count("processed") == 5
    flooded = [r for r in got if r.status == "quarantined"]
    assert len(flooded) == 7
    assert all("INTROLOOP_SENDER_HOURLY_LIMIT" in (r.reason or "") for r in flooded)
    with loop.session() as s:
        assert len(s.exec(select(Referral)).all()) == 5
        assert len(s.exec(select(Outbox)).all()) == 10  # two requests per recorded intro
    # an hour later the operator retries them, and they are recorded
    loop.clock.advance(timedelta(hours=1, minutes=1))  # type: ignore[attr-defined]
    for r in flooded[:5]:
        requeue_inbound(loop, r.id)  # type: ignore[arg-type]
        assert loop.process_one(r.id)[0] == "intro"  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- fuzz


def _corpus_messages() -> list[Path]:
    index = CORPUS / "index.tsv"
    if not index.is_file():
        return []
    out = []
    for line in index.read_text(encoding="utf-8").splitlines()[1:]:
        path = CORPUS / line.split("\t", 1)[0]
        if path.is_file() and path.stat().st_size < 200_000:
            head = path.read_bytes()[:2000]
            if b"\nFrom:" in head or head.startswith((b"From:", b"Received:", b"Return-Path:")):
                out.append(path)
    return sorted(out)


CORPUS_FILES = _corpus_messages()


def mutate(raw: bytes, ops: list[tuple[str, int]], member: bool) -> bytes:
    """Apply mutation operations (name, random seed) to a corpus message."""
    data = bytearray(raw)
    for name, seed in ops:
        rnd = random.Random(seed)
        if name == "flip" and data:
            for _ in range(rnd.randint(1, 20)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        elif name == "truncate" and data:
            del data[rnd.randrange(len(data)):]
        elif name == "nul" and data:
            data[rnd.randrange(len(data)):rnd.randrange(len(data)) or 0] = b"\x00" * 3
        elif name == "charset":
            data = bytearray(bytes(data).replace(
                b"charset=", b"charset=" + rnd.choice([b"x-bogus", b"utf-7", b"\xff", b""]) + b";"))
        elif name == "nest":
            depth = rnd.randint(1, 60)
            data = bytearray(b"".join(
                b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n' % (i, i)
                for i in range(depth)) + bytes(data))
        elif name == "headers":
            data = bytearray(b"Subject: " + bytes(data[:rnd.randint(0, 500)]).replace(
                b"\n", b" ") + b"\r\n" + bytes(data))
    if member:
        # make it look like a member's intro, so the deeper reading paths run too
        data = bytearray(b"From: " + MEMBER.encode() + b"\r\nTo: bob@acme.example, "
                         b"carol@studio.example\r\n" + bytes(data))
    return bytes(data)


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS_FILES, reason="../shared/corpus absent")
def test_fuzz_mutated_corpus_messages_through_the_whole_path(tmp_path: Path) -> None:
    loop = make_loop(tmp_path, sender_hourly_limit=0)  # hundreds of "intros" from one member
    seen = {"n": 0}

    @settings(max_examples=int(os.environ.get("INTROLOOP_FUZZ_EXAMPLES", "60")),
              deadline=None, derandomize=not os.environ.get("INTROLOOP_FUZZ_RANDOM"), database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(
        index=st.integers(0, len(CORPUS_FILES) - 1),
        ops=st.lists(st.tuples(st.sampled_from(["flip", "truncate", "nul", "charset", "nest",
                                                "headers"]), st.integers(0, 2**32)),
                     max_size=4),
        member=st.booleans(),
    )
    def run(index: int, ops: list[tuple[str, int]], member: bool) -> None:
        raw = mutate(CORPUS_FILES[index].read_bytes(), ops, member)
        seen["n"] += 1
        stored = loop.store_raw(_raw_mail(raw, seen["n"]))
        if not stored:
            return
        with loop.session() as s:
            inbound_id = s.exec(select(Inbound.id).order_by(Inbound.id.desc())).first()  # type: ignore[union-attr]
        kind, reason = loop.process_one(inbound_id)  # type: ignore[arg-type]
        assert reason, (CORPUS_FILES[index], ops)
        # quarantined by a rule (size, flood), never by an exception escaping the reading
        assert kind != "quarantined", (CORPUS_FILES[index].name, ops, member, reason)
        with loop.session() as s:
            row = s.get(Inbound, inbound_id)
            assert row is not None and row.status in ("processed", "quarantined")
            strangers = [o.to_email for o in s.exec(select(Outbox)) if o.to_email not in
                         {MEMBER, "bob@acme.example", "carol@studio.example",
                          "ops@network.example"}]
        assert not strangers, (CORPUS_FILES[index], ops, strangers)

    run()
    assert seen["n"] > 0


def _raw_mail(raw: bytes, n: int) -> Any:
    from service.ports import RawMail

    return RawMail(data=raw, mailbox="fuzz", folder="INBOX", ref=str(n))

"""Several workers on one database: leases, disjoint claims, and concurrent processing.

Unit-level (threads and several Loop objects in one process) on both backends where it makes
sense; the process-level tests with real `introloop run` workers against Dovecot are in
tests/test_workers_servers.py.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from service import leases
from service.adapters.db import make_engine, migrate
from service.adapters.local import MaildirMailbox
from service.adapters.tables import Inbound, Outbox, Party, Referral
from service.app import FrozenClock, build_loop
from service.config import load_settings
from service.loop import Loop
from service.queries import add_member

NOW = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)


def _settings(tmp: Path, url: str | None, **over: Any) -> Any:
    values = {
        "address": "referrals@network.example", "network_name": "Test Network",
        "operator": "ops@network.example", "secret": "x" * 32, "data_dir": tmp,
        "database_url": url, "imap_host": None, "smtp_host": None,
        "feedback_delay": "0s", "timezone": "UTC", "quiet_hours": "", "allow_senders": "",
        "party_weekly_cap": 0, "claim_lease": "5m",
    }
    values.update(over)
    return load_settings(None, values)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """None (SQLite under tmp_path) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))


def _loops(tmp: Path, url: str | None, n: int, **over: Any) -> list[Loop]:
    """`n` workers on one database and one Maildir, each with its own worker id and engine."""
    st = _settings(tmp, url, **over)
    add_member(st, "alice@example.com", "Alice", None, ())
    return [build_loop(st, clock=FrozenClock(NOW)) for _ in range(n)]


def _intro(n: int) -> bytes:
    a, b = f"a{n}@people.example", f"b{n}@people.example"  # one request each, never combined
    return (f"From: Alice <alice@example.com>\r\nTo: {a}, {b}\r\nSubject: Intro {n}\r\n"
            f"Message-ID: <intro-{n}@example.com>\r\nContent-Type: text/plain\r\n\r\n"
            f"You two should talk ({n}).\r\n").encode()


# ----------------------------------------------------------------------------- leases


def test_lease_is_held_renewed_taken_over_and_released(db_url: str | None,
                                                       tmp_path: Path) -> None:
    st = _settings(tmp_path, db_url)
    engine = make_engine(st.effective_database_url)
    migrate(engine)
    ttl = timedelta(seconds=90)
    assert leases.acquire(engine, "mailbox:x", "w1", ttl, NOW)
    assert not leases.acquire(engine, "mailbox:x", "w2", ttl, NOW + timedelta(seconds=30))
    assert leases.acquire(engine, "mailbox:x", "w1", ttl, NOW + timedelta(seconds=60))  # renew
    # w1 stops renewing (killed): w2 may take over only once the renewed lease has passed
    assert not leases.acquire(engine, "mailbox:x", "w2", ttl, NOW + timedelta(seconds=149))
    assert leases.holder(engine, "mailbox:x", NOW + timedelta(seconds=149)) == "w1"
    assert leases.acquire(engine, "mailbox:x", "w2", ttl, NOW + timedelta(seconds=151))
    assert not leases.acquire(engine, "mailbox:x", "w1", ttl, NOW + timedelta(seconds=152))
    leases.release(engine, "mailbox:x", "w1")  # not its lease any more: changes nothing
    assert leases.holder(engine, "mailbox:x", NOW + timedelta(seconds=152)) == "w2"
    leases.release(engine, "mailbox:x", "w2")
    assert leases.holder(engine, "mailbox:x", NOW + timedelta(seconds=152)) is None
    assert leases.acquire(engine, "mailbox:x", "w3", ttl, NOW + timedelta(seconds=153))


def test_racing_workers_never_both_get_the_lease(db_url: str | None, tmp_path: Path) -> None:
    st = _settings(tmp_path, db_url)
    engine = make_engine(st.effective_database_url)
    migrate(engine)
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def race(name: str) -> None:
        barrier.wait()
        if leases.acquire(engine, "mailbox:race", name, timedelta(seconds=60), NOW):
            winners.append(name)

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_only_the_lease_holder_reads_the_mailbox(db_url: str | None, tmp_path: Path) -> None:
    first, second = _loops(tmp_path, db_url, 2)
    assert isinstance(first.mailbox, MaildirMailbox)
    first.mailbox.deliver(_intro(1))
    assert first.fetch().fetched == 1 and first.holds_mailbox
    second.mailbox.deliver(_intro(2))
    assert second.fetch().fetched == 0 and not second.holds_mailbox
    assert second.process_pending().processed  # but it processes what the holder stored
    first.release_mailbox()  # clean shutdown: the other takes over at once
    assert second.fetch().fetched == 1 and second.holds_mailbox


# ----------------------------------------------------------------------------- claims


def _store(loop: Loop, n: int) -> None:
    assert isinstance(loop.mailbox, MaildirMailbox)
    for i in range(n):
        loop.mailbox.deliver(_intro(i))
    assert loop.fetch().fetched == n


def test_claims_are_disjoint_and_expire(db_url: str | None, tmp_path: Path) -> None:
    a, b = _loops(tmp_path, db_url, 2, claim_lease="5m")
    _store(a, 6)
    mine, theirs = a.claim_inbound(4), b.claim_inbound(4)
    assert len(mine) == 4 and len(theirs) == 2 and not set(mine) & set(theirs)
    assert b.claim_inbound(4) == theirs  # a worker may take its own claims again
    # `a` dies with its claims; once their lease has passed, `b` takes them over
    assert b.claim_inbound(10) == theirs
    b.clock.advance(timedelta(minutes=6))  # type: ignore[attr-defined]
    assert sorted(b.claim_inbound(10)) == sorted(mine + theirs)
    # and `a`, should it wake up, no longer processes what `b` took over
    assert a.process_one(mine[0])[0] == "skipped"
    assert b.process_one(mine[0])[0] == "intro"


def test_skip_locked_claims_are_disjoint_while_a_claim_is_open(pg_url: str,
                                                               tmp_path: Path) -> None:
    """PostgreSQL: a claim in progress (its transaction still open) is skipped, not waited on."""
    a, b = _loops(tmp_path, pg_url, 2)
    _store(a, 4)
    with Session(a.engine) as s, s.begin():
        locked = s.exec(select(Inbound.id).order_by(Inbound.id).limit(2)
                        .with_for_update(skip_locked=True)).all()
        got = b.claim_inbound(10)  # another connection, while `locked` are held
        assert sorted(got) == sorted(set(_ids(a)) - set(locked))


def _ids(loop: Loop) -> list[int]:
    with loop.session() as s:
        return [i for i in s.exec(select(Inbound.id)) if i is not None]


def test_sqlite_claims_are_disjoint_by_begin_immediate(tmp_path: Path) -> None:
    """SQLite drops FOR UPDATE; the write lock taken at BEGIN IMMEDIATE serialises claims."""
    loops = _loops(tmp_path, None, 4)
    _store(loops[0], 40)
    claimed: dict[str, set[int]] = {lp.worker: set() for lp in loops}
    barrier = threading.Barrier(4)

    def claim(loop: Loop) -> None:
        barrier.wait()
        while ids := loop.claim_inbound(3):
            claimed[loop.worker].update(ids)
            for i in ids:
                loop.process_one(i)

    threads = [threading.Thread(target=claim, args=(lp,)) for lp in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in claimed.values() for i in ids]
    assert sorted(every) == sorted(_ids(loops[0]))  # each message claimed by one worker only


@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_workers_process_each_message_once(db_url: str | None, tmp_path: Path,
                                                      workers: int) -> None:
    loops = _loops(tmp_path, db_url, workers)
    _store(loops[0], 30)
    # the same intro twice (other bytes, same Message-ID) and one with a new id: 1 + 1 referral
    assert isinstance(loops[0].mailbox, MaildirMailbox)
    loops[0].mailbox.deliver(_intro(3).replace(b"Subject:", b"X-Copy: 1\r\nSubject:"))
    loops[0].fetch()
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def work(loop: Loop) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                loop.process_pending()
                loop.send_due()
                loop.flush_outbox()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(lp,)) for lp in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with loops[0].session() as s:
        rows = s.exec(select(Inbound)).all()
        assert {r.status for r in rows} == {"processed"}, [(r.id, r.status, r.reason)
                                                           for r in rows]
        assert Counter(r.kind for r in rows) == {"intro": 30, "ignored": 1}
        assert len(s.exec(select(Referral)).all()) == 30
        assert len(s.exec(select(Party)).all()) == 60
        out = s.exec(select(Outbox)).all()
        assert len(out) == 60 and {o.status for o in out} == {"sent"}
        assert len({o.key for o in out}) == 60
    sent = list((tmp_path / "outgoing").rglob("*.eml"))
    assert len(sent) == 60  # one file per Message-ID: a resend would overwrite, not add...
    # ...so count sends by the outbox's attempts as well
    with loops[0].session() as s:
        assert s.exec(sa.select(sa.func.sum(Outbox.attempts))).one()[0] == 60


def test_two_workers_queue_each_monthly_summary_once(db_url: str | None,
                                                     tmp_path: Path) -> None:
    loops = _loops(tmp_path, db_url, 2)
    _store(loops[0], 4)
    loops[0].process_pending()
    later = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
    for lp in loops:
        lp.clock.current = later  # type: ignore[attr-defined]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def tick(loop: Loop) -> None:
        try:
            barrier.wait()
            loop.queue_monthly_summaries()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=tick, args=(lp,)) for lp in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with loops[0].session() as s:
        keys = [o.key for o in s.exec(select(Outbox)) if "summary" in o.kind]
    assert keys and len(keys) == len(set(keys))
    assert "summary:alice@example.com:2026-10" in keys

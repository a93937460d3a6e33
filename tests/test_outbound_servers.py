"""Sent exactly once, against real servers: Postfix + Dovecot (the `mailstack` fixture) and an
aiosmtpd server started here for fault injection (451 then 250, 550, a server that vanishes,
a worker killed with SIGKILL in the middle of a send).

Every check counts Message-IDs in the mailboxes people read, not log lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.app import FrozenClock, build_loop
from service.config import load_settings
from service.queries import add_member

pytestmark = pytest.mark.servers
SERVICE = "referrals@example.test"
REPO = Path(__file__).resolve().parent.parent


def mids(raws: list[bytes]) -> Counter[str]:
    """How many copies of each Message-ID."""
    return Counter(str(message_from_bytes(r, policy=policy.default)["Message-ID"])
                   for r in raws)


class Relay:
    """An aiosmtpd server that answers DATA as scripted, and relays what it accepts to the
    real Postfix so it lands in the real mailboxes (a faulty provider in front of a real one)."""

    def __init__(self, stack: Any):
        self.stack = stack
        self.script: list[str] = []  # answers for the next DATA commands; default 250
        self.accepted: list[bytes] = []
        self.refused: list[str] = []
        self.on_accept: Any = None  # called (in the server thread) with the bytes, before 250
        self.controller: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = self.script.pop(0) if self.script else "250 2.0.0 OK queued"
        if not answer.startswith("250"):
            self.refused.append(answer)
            return answer
        raw = bytes(envelope.original_content or envelope.content)
        self.accepted.append(raw)
        await asyncio.get_running_loop().run_in_executor(
            None, self.stack.send, raw, envelope.mail_from, list(envelope.rcpt_tos))
        if self.on_accept is not None:
            self.on_accept(raw)
        return answer

    def start(self, port: int | None = None) -> int:
        import socket

        from aiosmtpd.controller import Controller

        if port is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
        self.controller = Controller(self, hostname="127.0.0.1", port=port)
        self.controller.start()
        return port

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()


@pytest.fixture
def relay(mailstack: Any):
    r = Relay(mailstack)
    r.port = r.start()
    yield r
    r.stop()


def loop_on(e2e: Any, smtp_port: int, clock: FrozenClock, tmp: Path, **over: Any) -> Any:
    """An in-process Loop with a frozen clock: IMAP on Dovecot, SMTP on `smtp_port`."""
    values = {k.removeprefix("INTROLOOP_").lower(): v for k, v in e2e.env.items()}
    values.update(smtp_port=smtp_port, data_dir=str(tmp), **over)
    e2e.env["INTROLOOP_DATA_DIR"] = str(tmp)  # `introloop outbox` reads the same database
    settings = load_settings(None, values)
    add_member(settings, "alice@example.test", "Alice Martin", None, ())
    return build_loop(settings, clock=clock)


def introduce(e2e: Any, subject: str = "Intro: Bob <> Carol") -> None:
    e2e.intro("Alice Martin <alice@example.test>",
              ["Bob <bob@example.test>", "Carol <carol@example.test>"], subject)
    e2e.stack.wait_for(SERVICE, 1)


# ------------------------------------------------------------------ a whole conversation


def test_a_full_conversation_arrives_once_and_threaded(e2e: Any) -> None:
    e2e.cli("members", "add", "alice@example.test", "--name", "Alice Martin")
    intro_id = e2e.intro("Alice Martin <alice@example.test>",
                         ["Bob <bob@example.test>", "Carol <carol@example.test>"],
                         "Intro: Bob <> Carol")
    e2e.stack.wait_for(SERVICE, 1)
    e2e.run_once()
    bob_req = e2e.wait_from_service("bob@example.test", 1)[0]
    carol_req = e2e.wait_from_service("carol@example.test", 1)[0]
    assert bob_req["References"] == intro_id  # under the intro Bob already has
    e2e.answer("bob@example.test", bob_req, "👍 We already started a pilot together.")
    e2e.answer("carol@example.test", carol_req, "Not a fit for us, sadly: no budget.")
    e2e.stack.wait_for(SERVICE, 3)
    e2e.run_once()
    for _ in range(3):  # more passes change nothing
        e2e.run_once()
    bob = e2e.wait_from_service("bob@example.test", 2)
    carol = e2e.wait_from_service("carol@example.test", 2)
    alice = e2e.wait_from_service("alice@example.test", 2)
    everyone = [*bob, *carol, *alice]
    assert len(everyone) == 6
    counts = mids([m.as_bytes() for m in everyone])
    assert set(counts.values()) == {1}  # each message exactly once
    # threaded: thanks answer the request, which answers the intro
    assert bob[1]["In-Reply-To"] == bob_req["Message-ID"]
    assert str(bob[1]["References"]).split() == [intro_id, str(bob_req["Message-ID"])]
    assert carol[1]["In-Reply-To"] == carol_req["Message-ID"]
    assert all(m["References"] == intro_id for m in alice)  # under the intro Alice wrote
    # the service's Sent folder has each message once, for the operator to see
    assert mids(e2e.stack.messages(SERVICE, "Sent")) == counts
    for m in everyone:
        assert m["Auto-Submitted"] == "auto-generated"
        assert m.get_content_type() == "multipart/alternative"


# ------------------------------------------------------------------ fault injection


def test_451_then_250_delivers_once(e2e: Any, relay: Relay, tmp_path: Path) -> None:
    clock = FrozenClock(datetime.now(UTC))
    loop = loop_on(e2e, relay.port, clock, tmp_path)
    introduce(e2e)
    relay.script = ["451 4.3.0 Temporary local problem, try later"]
    first = loop.run_once()
    assert [f[2] for f in first.failed] == ["temporary: 451 4.3.0 Temporary local problem, "
                                            "try later"]
    clock.advance(timedelta(minutes=2))  # past the backoff (at most 1 minute with jitter)
    loop.run_once()
    bob = e2e.stack.wait_for("bob@example.test", 2)  # the intro and our request
    carol = e2e.stack.wait_for("carol@example.test", 2)
    ours = [r for r in bob + carol if b"feedback-request." in r]
    assert len(ours) == 2 and set(mids(ours).values()) == {1}
    assert len(relay.refused) == 1 and len(relay.accepted) == 2
    rows = json.loads(e2e.cli("outbox", "--json"))
    assert sorted((r["status"], r["attempts"]) for r in rows) == [("sent", 1), ("sent", 2)]


def test_550_leaves_the_row_failed_with_the_servers_answer(e2e: Any, relay: Relay,
                                                           tmp_path: Path) -> None:
    clock = FrozenClock(datetime.now(UTC))
    loop = loop_on(e2e, relay.port, clock, tmp_path)
    introduce(e2e)
    relay.script = ["550 5.1.1 <bob@example.test>: Recipient address rejected"]
    loop.run_once()
    rows = json.loads(e2e.cli("outbox", "--json", "--status", "failed"))
    assert len(rows) == 1 and rows[0]["last_error"].startswith("550 5.1.1")
    listing = e2e.cli("outbox")
    assert "failed" in listing and "Recipient address rejected" in listing
    for _ in range(3):
        clock.advance(timedelta(hours=1))
        loop.run_once()
    assert len(relay.refused) == 1  # never retried by itself
    assert "re-queued" in e2e.cli("outbox", "retry", str(rows[0]["id"]))
    loop.run_once()
    assert json.loads(e2e.cli("outbox", "--json", "--status", "failed")) == []


def test_a_server_that_vanishes_is_retried_later(e2e: Any, relay: Relay,
                                                 tmp_path: Path) -> None:
    clock = FrozenClock(datetime.now(UTC))
    loop = loop_on(e2e, relay.port, clock, tmp_path)
    introduce(e2e)
    relay.stop()
    report = loop.run_once()
    assert len(report.failed) == 1  # the pass stops at the first: the server is gone
    relay.start(relay.port)
    clock.advance(timedelta(minutes=5))
    loop.sender.close()
    loop.run_once()
    assert len(relay.accepted) == 2 and set(mids(relay.accepted).values()) == {1}


# ------------------------------------------------------------------ killed mid-send


def run_subprocess(env: dict[str, str], **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--env-file", "/nonexistent/.env",
         "run", "--once", "--json"],
        cwd=REPO, env={**os.environ, **env, **extra},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def expire_leases(data_dir: Path) -> list[tuple[int, str]]:
    """Let the lease of rows left `sending` run out (10 minutes later, without waiting)."""
    engine = sa.create_engine(f"sqlite:///{data_dir / 'introloop.db'}")
    with engine.begin() as c:
        left = [(r[0], r[1]) for r in c.execute(
            sa.text("SELECT id, to_email FROM outbox WHERE status = 'sending'"))]
        c.execute(sa.text("UPDATE outbox SET lease_until = :t WHERE status = 'sending'"),
                  {"t": datetime(2000, 1, 1)})
    engine.dispose()
    return left


def test_killed_right_after_the_smtp_transaction_it_is_not_sent_again(e2e: Any) -> None:
    e2e.cli("members", "add", "alice@example.test", "--name", "Alice Martin")
    introduce(e2e)
    proc = run_subprocess(e2e.env, INTROLOOP_TEST_CRASH_AFTER_SEND="1")
    proc.communicate(timeout=120)
    assert proc.returncode == 70  # died right after the first successful send
    left = expire_leases(Path(e2e.env["INTROLOOP_DATA_DIR"]))
    assert len(left) == 1
    (_, first_to) = left[0]
    e2e.stack.wait_for(first_to, 2)  # the intro and the request that went out
    after = e2e.run_once()  # restarted
    assert [s[1] for s in after["sent"]] != [first_to]
    assert first_to not in [s[1] for s in after["sent"]]
    other = ({"bob@example.test", "carol@example.test"} - {first_to}).pop()
    e2e.stack.wait_for(other, 2)
    e2e.run_once()
    for user in ("bob@example.test", "carol@example.test"):
        assert len(e2e.from_service(user)) == 1, user
    rows = {r["to"]: r for r in json.loads(e2e.cli("outbox", "--json"))}
    assert rows[first_to]["status"] == "sent"
    assert "found in the Sent folder" in rows[first_to]["last_error"]
    assert set(mids(e2e.stack.messages(SERVICE, "Sent")).values()) == {1}


def test_killed_by_the_server_after_it_accepted_data_it_is_not_sent_again(
        e2e: Any, relay: Relay) -> None:
    # A provider that files what it accepts in Sent (Gmail and Microsoft 365 do) kills the
    # client the moment it has the message: the client never sees the 250, never copies it
    # to Sent itself, never marks it sent. The next run must find it there.
    e2e.cli("members", "add", "alice@example.test", "--name", "Alice Martin")
    introduce(e2e)
    env = {**e2e.env, "INTROLOOP_SMTP_PORT": str(relay.port)}
    victim: dict[str, subprocess.Popen[bytes]] = {}
    killed = threading.Event()

    def provider_saves_then_kills(raw: bytes) -> None:
        if killed.is_set():
            return
        with e2e.stack.imap(SERVICE) as c:
            c.append("Sent", raw, flags=[b"\\Seen"])
        os.kill(victim["proc"].pid, signal.SIGKILL)
        killed.set()

    relay.on_accept = provider_saves_then_kills
    victim["proc"] = run_subprocess(env)
    victim["proc"].communicate(timeout=120)
    assert victim["proc"].returncode == -signal.SIGKILL
    assert len(relay.accepted) == 1
    left = expire_leases(Path(e2e.env["INTROLOOP_DATA_DIR"]))
    assert len(left) == 1
    e2e.env["INTROLOOP_SMTP_PORT"] = str(relay.port)
    e2e.run_once()
    e2e.run_once()
    assert len(relay.accepted) == 2
    assert set(mids(relay.accepted).values()) == {1}
    for user in ("bob@example.test", "carol@example.test"):
        assert len(e2e.wait_from_service(user, 1)) == 1, user


def test_smtp_server_is_reachable_for_these_tests(mailstack: Any) -> None:
    with smtplib.SMTP(mailstack.host, mailstack.smtp_port, timeout=10) as s:
        assert s.noop()[0] == 250

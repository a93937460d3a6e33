"""Several `introloop run` worker processes on one PostgreSQL database and one Dovecot mailbox.

Intros go in over SMTP (Postfix → Dovecot), two and four real worker processes read, decide
and send concurrently, the introduced people answer, and at the end every Message-ID the
service sent is counted in the recipients' Dovecot mailboxes: each exactly once (no
duplicates), and every outbox row delivered (no losses).

The helpers here (`Workers`, `seed_people`, `delivered`) are shared with tests/test_faults*.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.adapters.db import make_engine

pytestmark = pytest.mark.servers
SERVICE = "referrals@example.test"
REFERRERS = ("alice@example.test", "bob@example.test")
ROOT = Path(__file__).resolve().parent.parent


def people(n: int) -> list[str]:
    """Addresses of `n` introduced people (mailboxes created by `seed_people`)."""
    return [f"p{i:03d}@example.test" for i in range(n)]


def seed_people(stack: Any, n: int) -> list[str]:
    """Make sure the mail stack has mailboxes p000..p(n-1): one Postfix reload for all."""
    wanted = people(n)
    missing = [p for p in wanted if p not in stack.users]
    if missing:
        stack.users.extend(missing[:-1])  # written out together by the last add_user
        stack.add_user(missing[-1])
    return wanted


def worker_env(e2e: Any, pg_url: str, **extra: str) -> dict[str, str]:
    """The e2e environment on PostgreSQL, with short leases so takeovers happen in a test."""
    env = {
        **e2e.env,
        "INTROLOOP_DATABASE_URL": pg_url,
        "INTROLOOP_FEEDBACK_DELAY": "0s",
        "INTROLOOP_PARTY_WEEKLY_CAP": "0",
        "INTROLOOP_POLL_INTERVAL": "5s",
        "INTROLOOP_MAILBOX_LEASE": "6s",
        "INTROLOOP_CLAIM_LEASE": "5s",
        "INTROLOOP_SENDER_HOURLY_LIMIT": "0",
    }
    env.update(extra)
    return env


class Workers:
    """Real worker processes (`python -m service.cli run`), each logging to its own file."""

    def __init__(self, env: dict[str, str], logdir: Path):
        self.env = {**os.environ, **env, "INTROLOOP_LOG_LEVEL": "INFO"}
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int = 1, args: tuple[str, ...] = ("run",),
              wrapper: str | None = None) -> list[subprocess.Popen[bytes]]:
        """Start `n` workers; `wrapper` is Python code run instead of the plain CLI (fault
        tests use it to kill a worker at a chosen point)."""
        started = []
        for _ in range(n):
            i = len(self.procs)
            cmd = [sys.executable, "-m", "service.cli", "--env-file", "/nonexistent", *args]
            if wrapper is not None:
                cmd = [sys.executable, "-c", wrapper, "--env-file", "/nonexistent", *args]
            proc = subprocess.Popen(
                cmd, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                stderr=open(self.logdir / f"worker{i}.log", "wb"),  # noqa: SIM115
            )
            self.procs.append(proc)
            started.append(proc)
        return started

    def log(self, i: int | None = None) -> str:
        """One worker's log, or all of them."""
        files = [self.logdir / f"worker{i}.log"] if i is not None else sorted(
            self.logdir.glob("worker*.log"))
        return "\n".join(f.read_text(errors="replace") for f in files if f.exists())

    def stop(self, timeout: float = 60) -> list[int]:
        """SIGTERM every live worker and wait; returns their exit codes."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes


def wait_until(what: str, check: Callable[[], bool], timeout: float = 90,
               why: Callable[[], str] = lambda: "") -> None:
    """Poll `check` until true; fail with `what` and `why()` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{why()}"[-6000:], pytrace=False)
        time.sleep(0.2)


def scalar(engine: sa.Engine, sql: str) -> Any:
    """One value from the database."""
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


def send_intros(e2e: Any, pairs: list[tuple[str, str]]) -> list[str]:
    """One intro per pair, from the referrers in turn; returns their Message-IDs."""
    return [e2e.intro(REFERRERS[i % 2], [a, b], f"Intro {i}: {a} <> {b}")
            for i, (a, b) in enumerate(pairs)]


def delivered(stack: Any, users: list[str]) -> Counter[str]:
    """Message-IDs (without <>) of every message from the service in these users' INBOXes."""
    seen: Counter[str] = Counter()
    for user in users:
        for raw in stack.messages(user):
            msg = message_from_bytes(raw, policy=policy.default)
            if SERVICE in str(msg.get("From", "")):
                seen[str(msg["Message-ID"]).strip().strip("<>")] += 1
    return seen


def outbox_rows(engine: sa.Engine) -> list[Any]:
    """(key, kind, to_email, message_id, status) of every outbox row."""
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "select key, kind, to_email, message_id, status from outbox order by id")))


def check_exactly_once(stack: Any, engine: sa.Engine, users: list[str]) -> Counter[str]:
    """Every outbox row sent and delivered once; nothing else delivered; nothing twice."""
    rows = outbox_rows(engine)
    seen = delivered(stack, users)
    dupes = {m: n for m, n in seen.items() if n > 1}
    assert not dupes, f"delivered more than once: {dupes}"
    unsent = [r for r in rows if r.status != "sent"]
    assert not unsent, f"not sent: {unsent}"
    missing = [r for r in rows if r.message_id not in seen]
    assert not missing, f"sent but not in the recipient's mailbox: {missing}"
    assert set(seen) == {r.message_id for r in rows}
    return seen


def answer_all(e2e: Any, users: list[str], text: str = "It went great, thanks!") -> int:
    """Each user answers every request they received; returns how many answers were sent."""
    n = 0
    for user in users:
        for req in e2e.from_service(user):
            if "Reply-To" in req and str(req["Reply-To"]).startswith("referrals+"):
                e2e.answer(user, req, text)
                n += 1
    return n


@pytest.fixture
def engine_for(pg_url: str) -> Iterator[sa.Engine]:
    """An engine on the test's PostgreSQL database, disposed after the test."""
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("n_workers", [2, 4])
def test_workers_share_one_mailbox_and_outbox_exactly_once(
        n_workers: int, e2e: Any, pg_url: str, engine_for: sa.Engine, tmp_path: Path) -> None:
    stack = e2e.stack
    n_intros = 8 * n_workers
    everyone = seed_people(stack, 2 * n_intros)
    env = worker_env(e2e, pg_url)
    e2e.env.update(env)
    for r in REFERRERS:
        e2e.cli("members", "add", r)
    e2e.cli("check")  # migrates the database before the workers race to
    pairs = [(everyone[2 * i], everyone[2 * i + 1]) for i in range(n_intros)]
    intro_ids = send_intros(e2e, pairs)
    stack.wait_for(SERVICE, n_intros)

    workers = Workers(env, tmp_path)
    workers.start(n_workers)
    engine = engine_for
    try:
        wait_until(f"{2 * n_intros} requests sent",
                   lambda: scalar(engine, "select count(*) from outbox where status='sent'")
                   == 2 * n_intros, why=workers.log)
        assert scalar(engine, "select count(*) from referral") == n_intros
        assert answer_all(e2e, everyone) == 2 * n_intros
        stack.wait_for(SERVICE, n_intros + 2 * n_intros)
        wait_until("every answer processed",
                   lambda: scalar(engine, "select count(*) from inbound where "
                                  "status = 'processed'") == 3 * n_intros, why=workers.log)
        # positive answers: a thank-you to each party, appreciation to the referrer
        wait_until("thanks sent and the outbox empty",
                   lambda: scalar(engine, "select count(*) from outbox where status='sent' "
                                  "and kind = 'thanks_positive'") == 2 * n_intros
                   and scalar(engine, "select count(*) from outbox where status <> 'sent'")
                   == 0, why=workers.log)
    finally:
        codes = workers.stop()
    assert codes == [0] * n_workers, workers.log()
    assert "Traceback" not in workers.log()
    assert "raised an exception" not in workers.log()  # no scheduler job died either

    with engine.connect() as conn:
        intro_mids = {r[0] for r in conn.execute(sa.text(
            "select intro_message_id from referral"))}
        by_worker = dict(conn.execute(sa.text(
            "select claimed_by, count(*) from inbound group by claimed_by")).all())
        kinds = Counter(r[0] for r in conn.execute(sa.text("select kind from inbound")))
    assert intro_mids == {m.strip("<>") for m in intro_ids}  # every intro, once
    assert kinds == {"intro": n_intros, "reply": 2 * n_intros}
    seen = check_exactly_once(stack, engine, everyone + list(REFERRERS))
    assert len(seen) >= 5 * n_intros  # 2 requests, 2 thanks, appreciation(s) per intro
    # only one worker held the mailbox at a time; the work itself was shared
    print(f"\n{n_workers} workers: inbound processed per worker {sorted(by_worker.values())}")
    taken = [json.loads(line)["worker"] for line in workers.log().splitlines()
             if '"mailbox_lease_taken"' in line]
    assert len(taken) >= 1

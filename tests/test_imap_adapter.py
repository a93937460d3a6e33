"""The IMAP edge against a real Dovecot: PEEK, keywords, the UID n:* trap, UIDVALIDITY, IDLE,
and a long-running `introloop run` that survives a server restart and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest

from service.adapters.imap import DONE_KEYWORD, ImapMailbox

pytestmark = pytest.mark.servers
SERVICE = "referrals@example.test"


def _mailbox(stack, folder: str = "INBOX") -> ImapMailbox:
    return ImapMailbox(stack.host, stack.imap_port, SERVICE, stack.password(SERVICE),
                       tls="none", folder=folder, timeout=10)


def _note(i: int) -> bytes:
    m = EmailMessage()
    m["From"] = "someone@example.test"
    m["To"] = SERVICE
    m["Subject"] = f"note {i}"
    m["Message-ID"] = make_msgid(domain="example.test")
    m.set_content(f"note {i}")
    return m.as_bytes()


def test_fetch_peeks_flags_and_respects_the_watermark(mailstack) -> None:
    mailstack.reset()
    for i in range(3):
        mailstack.send(_note(i), "someone@example.test", [SERVICE])
    mailstack.wait_for(SERVICE, 3)
    mb = _mailbox(mailstack)
    try:
        got = list(mb.fetch_new(0))
        assert [m.uid for m in got] == sorted(m.uid for m in got) and len(got) == 3
        assert mb.uidvalidity() and all(m.uidvalidity == mb.uidvalidity() for m in got)
        for m in got:
            mb.mark_done(m)
        top = max(m.uid for m in got)
        # UID SEARCH top+1:* still returns the highest UID (RFC 3501): it must be dropped
        assert list(mb.fetch_new(top)) == []
        assert [m.uid for m in mb.fetch_new(top - 1)] == [top]
    finally:
        mb.close()
    with mailstack.imap(SERVICE) as c:
        c.select_folder("INBOX", readonly=True)
        flags = c.get_flags(c.search("ALL"))
    assert all(b"\\Seen" not in f for f in flags.values())  # people may read this mailbox
    assert all(DONE_KEYWORD in f for f in flags.values())


def test_uidvalidity_change_rereads_without_double_processing(e2e) -> None:
    e2e.cli("members", "add", "alice@example.test")
    e2e.intro("alice@example.test", ["bob@example.test", "carol@example.test"], "Intro")
    e2e.stack.wait_for(SERVICE, 1)
    first = e2e.run_once()
    assert [p[1] for p in first["processed"]] == ["intro"]
    # the folder is recreated with the same message: a new UIDVALIDITY, the same bytes
    with e2e.stack.imap(SERVICE) as c:
        c.select_folder("INBOX")
        raw = c.fetch(c.search("ALL"), ["BODY.PEEK[]"])
        c.create_folder("Tmp")
        c.append("Tmp", next(iter(raw.values()))[b"BODY[]"])
        old = c.folder_status("INBOX", [b"UIDVALIDITY"])[b"UIDVALIDITY"]
    e2e.env["INTROLOOP_IMAP_FOLDER"] = "Tmp"
    second = e2e.run_once()
    assert second["fetched"] == 1 and second["processed"] == []  # same bytes: skipped
    assert len(json.loads(e2e.cli("referrals", "--json"))) == 1
    assert old


def _spawn_run(env: dict[str, str], tmp: Path) -> subprocess.Popen[str]:
    full = {**os.environ, **env, "INTROLOOP_POLL_INTERVAL": "5s", "INTROLOOP_LOG_LEVEL": "INFO"}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--env-file", "/nonexistent", "run"],
        env=full, stdout=subprocess.PIPE, stderr=open(tmp / "run.log", "w"),
        text=True, cwd=tmp,
    )


def _wait_referrals(e2e, n: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = json.loads(e2e.cli("referrals", "--json"))
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


def test_long_running_worker_idles_reconnects_and_stops_cleanly(e2e, tmp_path: Path) -> None:
    e2e.cli("members", "add", "alice@example.test")
    e2e.cli("check")  # creates the database before the worker starts
    proc = _spawn_run(e2e.env, tmp_path)
    try:
        time.sleep(2)
        e2e.intro("alice@example.test", ["bob@example.test", "carol@example.test"], "One")
        rows = _wait_referrals(e2e, 1)
        assert len(rows) == 1, (tmp_path / "run.log").read_text()[-2000:]
        # both requests go out without another command (zero delay, scheduler tick)
        assert e2e.wait_from_service("bob@example.test", 1, timeout=30)

        e2e.stack.stop_imap()  # the server goes away mid-IDLE...
        time.sleep(1)
        e2e.stack.start_imap()  # ...and comes back: the worker reconnects by itself
        e2e.intro("alice@example.test", ["dave@example.test", "erin@example.test"], "Two")
        rows = _wait_referrals(e2e, 2, timeout=60)
        assert len(rows) == 2, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, (tmp_path / "run.log").read_text()[-2000:]
    assert "Traceback" not in (tmp_path / "run.log").read_text()

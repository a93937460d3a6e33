"""Faults survived by running workers: IMAP restarted mid-IDLE, SMTP down for a while, the
PostgreSQL server stopped and started again, and an unusable (read-only, full) database.

Real `introloop run` processes against Postfix + Dovecot and PostgreSQL. After each fault
every Message-ID the service sent is counted in the recipients' Dovecot mailboxes: each
exactly once, none missing. SIGKILL at random points is in tests/test_faults_kill.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from service.adapters.imap import DONE_KEYWORD
from service.cli import main

pytestmark = pytest.mark.servers
SERVICE = "referrals@example.test"
TESTS = Path(__file__).resolve().parent


def _load(name: str) -> ModuleType:
    key = f"introloop_faults_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, TESTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


W = _load("test_workers_servers")
engine_for = W.engine_for  # a fixture: pytest finds it in this module too


# ----------------------------------------------------------------------------- helpers


class TcpProxy:
    """127.0.0.1:port → upstream. `down()` closes the port and every open connection (the
    server is gone: connection refused); `up()` opens the same port again."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def up(self) -> None:
        """Accept connections (again) on the same port."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def restart_imap(stack: Any, down_for: float) -> None:
    """Stop Dovecot, end the sessions it leaves behind, wait, and start it again.

    Stopping Dovecot's master leaves the running `imap` session processes alive (they are
    re-parented to PID 1 and keep serving their clients), so a client in IDLE would not even
    notice. A real restart or crash of the server host ends them too: do that, by pid, for
    this stack's instance only (its processes are named dovecot-introloop-<imap port>/...)."""
    stack.stop_imap()
    prefix = f"dovecot-introloop-{stack.imap_port}/".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "cmdline").read_bytes().startswith(prefix):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue
    time.sleep(down_for)
    stack.start_imap()
    # mail Postfix deferred meanwhile: deliver it now rather than at its next retry
    subprocess.run(["postfix", "-c", str(stack.postfix_dir), "flush"], check=False,
                   capture_output=True, env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/bin"})


def pg_stop(cluster: Any) -> None:
    """Stop the PostgreSQL server (fast shutdown: sessions are terminated)."""
    res = cluster._run(cluster.bindir / "pg_ctl", "-D", cluster.data_dir, "-m", "fast", "-w",
                       "stop")
    assert res.returncode == 0, res.stderr


def pg_start(cluster: Any) -> None:
    """Start it again on the same port (clients keep their URL)."""
    res = cluster._run(
        cluster.bindir / "pg_ctl", "-D", cluster.data_dir, "-l", cluster.log, "-w", "-o",
        f"-p {cluster.port} -k {cluster.root} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off", "start")
    assert res.returncode == 0, res.stdout + res.stderr


def flagged_hashes(stack: Any) -> dict[int, tuple[str, bool]]:
    """UID → (sha256 of the bytes, carries $Introloop) for the service INBOX."""
    with stack.imap(SERVICE) as c:
        c.select_folder("INBOX", readonly=True)
        uids = c.search("ALL")
        if not uids:
            return {}
        data = c.fetch(uids, ["BODY.PEEK[]", "FLAGS"])
    return {u: (hashlib.sha256(d[b"BODY[]"]).hexdigest(), DONE_KEYWORD in d[b"FLAGS"])
            for u, d in data.items()}


def setup(e2e: Any, pg_url: str, **extra: str) -> dict[str, str]:
    """PostgreSQL environment, members, migrated database; returns the workers' environment."""
    env = W.worker_env(e2e, pg_url, **extra)
    e2e.env.update(env)
    for r in W.REFERRERS:
        e2e.cli("members", "add", r)
    e2e.cli("check")
    return env


def intro_count(engine: sa.Engine) -> int:
    return int(W.scalar(engine, "select count(*) from referral"))


# ----------------------------------------------------------------------------- IMAP


def test_imap_restart_mid_idle_misses_nothing_and_doubles_nothing(
        e2e: Any, pg_url: str, engine_for: sa.Engine, tmp_path: Path) -> None:
    stack, engine = e2e.stack, engine_for
    everyone = W.seed_people(stack, 6)
    env = setup(e2e, pg_url)
    workers = W.Workers(env, tmp_path)
    workers.start(2)
    try:
        W.send_intros(e2e, [(everyone[0], everyone[1])])
        W.wait_until("the first intro", lambda: intro_count(engine) == 1, why=workers.log)
        time.sleep(1)  # the mailbox reader is back in IDLE
        # mail arriving while Dovecot is down waits in Postfix's queue (LMTP refused)
        threading.Timer(0.5, W.send_intros, (e2e, [(everyone[2], everyone[3])])).start()
        restart_imap(stack, down_for=2)
        W.send_intros(e2e, [(everyone[4], everyone[5])])
        W.wait_until("all three intros", lambda: intro_count(engine) == 3, timeout=120,
                     why=workers.log)
        W.wait_until("six requests sent",
                     lambda: W.scalar(engine, "select count(*) from outbox where "
                                      "status = 'sent'") == 6, why=workers.log)
    finally:
        codes = workers.stop()
    assert codes == [0, 0], workers.log()
    log = workers.log()
    assert "Traceback" not in log
    assert "imap_idle_interrupted" in log  # it noticed, and said so
    assert log.count('"imap_connected"') >= 2  # and reconnected
    assert W.scalar(engine, "select count(*) from inbound") == 3  # stored once each
    assert W.scalar(engine, "select count(*) from inbound where status = 'processed'") == 3
    W.check_exactly_once(stack, engine, everyone)


# ----------------------------------------------------------------------------- SMTP


def test_smtp_down_for_a_while_outbox_waits_then_drains_once(
        e2e: Any, pg_url: str, engine_for: sa.Engine, tmp_path: Path) -> None:
    stack, engine = e2e.stack, engine_for
    everyone = W.seed_people(stack, 8)
    proxy = TcpProxy(stack.smtp_port)
    proxy.up()
    env = setup(e2e, pg_url, INTROLOOP_SMTP_PORT=str(proxy.port))
    workers = W.Workers(env, tmp_path)
    try:
        proxy.down()  # the SMTP server is unreachable from the start of the batch
        W.send_intros(e2e, [(everyone[2 * i], everyone[2 * i + 1]) for i in range(4)])
        stack.wait_for(SERVICE, 4)
        workers.start(2)
        W.wait_until("the requests to be tried and deferred",
                     lambda: W.scalar(engine, "select count(*) from outbox where "
                                      "last_error is not null") >= 1, why=workers.log)
        time.sleep(2)
        assert W.scalar(engine, "select count(*) from outbox where status = 'sent'") == 0
        assert W.delivered(stack, everyone) == {}
        proxy.up()
        # skip the retry backoff (1-2 minutes, tested in tests/core): due now
        with engine.begin() as conn:
            conn.execute(sa.text("update outbox set next_attempt_at = now() "
                                 "where status = 'pending'"))
        W.wait_until("the outbox to drain",
                     lambda: W.scalar(engine, "select count(*) from outbox where "
                                      "status <> 'sent'") == 0
                     and W.scalar(engine, "select count(*) from outbox") == 8,
                     timeout=120, why=workers.log)
    finally:
        codes = workers.stop()
        proxy.down()
    assert codes == [0, 0], workers.log()
    assert "Traceback" not in workers.log()
    W.check_exactly_once(stack, engine, everyone)


# ----------------------------------------------------------------------------- database


def test_postgres_restart_worker_waits_resumes_and_flags_only_stored_mail(
        e2e: Any, pg_url: str, pg_cluster: Any, engine_for: sa.Engine, tmp_path: Path) -> None:
    stack, engine = e2e.stack, engine_for
    everyone = W.seed_people(stack, 4)
    env = setup(e2e, pg_url)
    workers = W.Workers(env, tmp_path)
    workers.start(1)
    stopped = False
    try:
        W.send_intros(e2e, [(everyone[0], everyone[1])])
        W.wait_until("the first intro", lambda: intro_count(engine) == 1, why=workers.log)
        engine.dispose()
        pg_stop(pg_cluster)
        stopped = True
        W.send_intros(e2e, [(everyone[2], everyone[3])])  # arrives while the database is down
        stack.wait_for(SERVICE, 2)
        time.sleep(4)  # IDLE wakes the worker; it cannot store the message
        hashes = flagged_hashes(stack)
        assert [flag for _, flag in hashes.values()].count(True) == 1  # only the stored one
        pg_start(pg_cluster)
        stopped = False
        W.wait_until("the second intro after the restart", lambda: intro_count(engine) == 2,
                     timeout=120, why=workers.log)
        W.wait_until("four requests sent",
                     lambda: W.scalar(engine, "select count(*) from outbox where "
                                      "status = 'sent'") == 4, why=workers.log)
    finally:
        if stopped:
            pg_start(pg_cluster)
        codes = workers.stop()
    log = workers.log()
    assert codes == [0], log
    assert "Traceback" not in log
    warnings = [ln for ln in log.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "database" in warnings[0], warnings  # one clear line
    assert any(ln.startswith("resumed after") for ln in log.splitlines())
    # every flagged message's bytes are in the database
    with engine.connect() as conn:
        stored = {r[0] for r in conn.execute(sa.text("select content_hash from inbound"))}
    assert all(h in stored for h, flag in flagged_hashes(stack).values() if flag)
    W.check_exactly_once(stack, engine, everyone)


def _run_once(env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, ["--env-file", "/nonexistent", "run", "--once"], env=env)


def _local_env(tmp: Path, url: str) -> dict[str, str]:
    return {"INTROLOOP_ADDRESS": "referrals@network.example", "INTROLOOP_NETWORK_NAME": "T",
            "INTROLOOP_SECRET": "s" * 32, "INTROLOOP_DATA_DIR": str(tmp),
            "INTROLOOP_DATABASE_URL": url, "INTROLOOP_IMAP_HOST": "", "INTROLOOP_SMTP_HOST": ""}


def _deliver(tmp: Path, n: int) -> None:
    from service.adapters.local import MaildirMailbox

    box = MaildirMailbox(tmp / "maildir")
    for i in range(n):
        box.deliver(f"From: a@x.example\r\nTo: referrals@network.example\r\nSubject: {i}\r\n"
                    f"Message-ID: <m{i}@x.example>\r\n\r\nhello {i}\r\n".encode())


def test_read_only_database_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "introloop.db"
    env = _local_env(tmp_path, f"sqlite:///{db}")
    assert _run_once(env).exit_code == 0  # creates and migrates the database
    _deliver(tmp_path, 1)
    # as root, file modes do not stop writes: open it read-only the SQLite way
    ro = {**env, "INTROLOOP_DATABASE_URL": f"sqlite:///file:{db}?mode=ro&uri=true"}
    result = _run_once(ro)
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "read-only" in lines[0] and "write access" in lines[0], lines
    assert "Traceback" not in result.output
    assert list((tmp_path / "maildir" / "new").iterdir())  # the message was not marked done


def test_full_disk_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "introloop.db"
    env = _local_env(tmp_path, f"sqlite:///{db}")
    assert _run_once(env).exit_code == 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        pages = conn.execute("pragma page_count").fetchone()[0]
    _deliver(tmp_path, 1)
    big = tmp_path / "maildir" / "new"
    (big / "big.eml").write_bytes(b"Subject: big\r\n\r\n" + b"x" * 2_000_000)
    # SQLite's own size cap stands in for a full volume: it fails with SQLITE_FULL alike
    from service.adapters import db as dbmod

    real = dbmod.make_engine

    def capped(url: str) -> Any:
        engine = real(url)

        @sa.event.listens_for(engine, "connect")
        def _cap(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.execute(f"pragma max_page_count = {pages + 20}")

        return engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dbmod, "make_engine", capped)
        mp.setattr("service.app.make_engine", capped)
        result = _run_once(env)
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "disk full" in lines[0] and "free space" in lines[0], lines
    assert "Traceback" not in result.output


def test_worker_log_lines_are_json(e2e: Any, tmp_path: Path) -> None:
    """The fault tests read the workers' logs: one JSON object per line (plus plain warnings)."""
    workers = W.Workers({**e2e.env, "INTROLOOP_DATA_DIR": str(tmp_path)}, tmp_path)
    e2e.cli("check")
    workers.start(1)
    time.sleep(3)
    assert workers.stop() == [0]
    events = [json.loads(ln) for ln in workers.log().splitlines() if ln.startswith("{")]
    assert any(e.get("event") == "mailbox_lease_taken" for e in events)

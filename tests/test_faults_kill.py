"""SIGKILL a worker at random points while it processes a batch; nothing lost, nothing twice.

Each seed: a fresh PostgreSQL database and emptied mailboxes, a small batch (3 intros put
straight into the service's Dovecot INBOX; in phase 2 the six introduced people's answers), a
worker (`introloop run --once`, forked from this process so no interpreter start-up is paid)
that is killed with SIGKILL, then a fresh worker that finishes the batch. Checked after
every seed: every message stored once and processed once, every intro one referral, every
outbox row sent, and every Message-ID the service sent delivered exactly once into the
recipients' Dovecot mailboxes; right after the kill, every message flagged on the IMAP server
has its bytes in the database.

Where the kill lands, per seed (random.Random(seed)):
- most seeds: the k-th pass through an instrumented point (before or after storing the raw
  bytes, flagging, claiming, processing, queueing, claiming an outbox row, SMTP, the Sent
  copy, marking sent), k uniform over the points a whole batch passes: exact and
  reproducible;
- every fifth seed: a SIGKILL from outside after a random delay within the batch's measured
  duration. The one point not covered by the first kind is "after the SMTP server accepted
  the message, before its copy is in the Sent folder": an interrupted row is sent again
  unless the Sent folder has it, so a kill inside those few milliseconds can deliver one
  message twice (with the same Message-ID). A timed kill that lands there is reported, and
  only such an in-doubt row may be delivered twice.

INTROLOOP_KILL_SEEDS=N runs seeds 1..N (default 20); the seeds and where each kill landed
are printed (pytest -s) and in the assertion messages.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

# Imported now rather than by hypothesis' pytest plugin at the very end of a session: run
# alone, this file leaves CPython 3.11.7 unable to compile that module late ("AST constructor
# recursion depth mismatch"); the cause is outside this code base, the symptom is avoided.
with contextlib.suppress(ImportError):
    import hypothesis.internal.observability  # noqa: F401

from service.adapters.db import make_engine

pytestmark = pytest.mark.servers
SERVICE = "referrals@example.test"
TESTS = Path(__file__).resolve().parent
SEEDS = list(range(1, int(os.environ.get("INTROLOOP_KILL_SEEDS", "20")) + 1))
N_INTROS = 3


def _load(name: str) -> ModuleType:
    key = f"introloop_kill_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, TESTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


W = _load("test_workers_servers")

# (module, class, method, when): the instrumented points, in the order a batch meets them
POINTS = [
    ("service.inbound", "InboundMixin", "store_batch", "after"),
    ("service.adapters.imap", "ImapMailbox", "mark_done", "after"),
    ("service.inbound", "InboundMixin", "claim_inbound", "after"),
    ("service.inbound", "InboundMixin", "_process_locked", "before"),
    ("service.inbound", "InboundMixin", "_process_locked", "after"),
    ("service.outbound", "OutboundMixin", "send_due", "after"),
    ("service.outbound", "OutboundMixin", "_claim", "after"),
    ("service.adapters.smtp", "SmtpSender", "send", "before"),
    ("service.adapters.imap", "ImapMailbox", "append_sent", "after"),
    ("service.outbound", "OutboundMixin", "_send_one", "after"),
]


# ----------------------------------------------------------------------------- the worker


def _instrument(kill_at: int, trace: Path) -> dict[str, int]:
    """In the forked worker: count passes through POINTS; SIGKILL ourselves at pass `kill_at`
    (0: never). The count (and the point killed at) goes to `trace`."""
    import importlib

    state = {"n": 0}

    def hit(label: str) -> None:
        state["n"] += 1
        if state["n"] == kill_at:
            trace.write_text(f"{state['n']} {label}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    for module, cls_name, name, when in POINTS:
        cls = getattr(importlib.import_module(module), cls_name)
        real = getattr(cls, name, None)
        if real is None:  # renamed elsewhere: that point is simply not instrumented
            continue

        def wrapped(*a: Any, __real: Any = real, __label: str = f"{when} {cls_name}.{name}",
                    __when: str = when, **kw: Any) -> Any:
            if __when == "before":
                hit(__label)
            out = __real(*a, **kw)
            if __when == "after":
                hit(__label)
            return out

        setattr(cls, name, wrapped)
    return state


def fork_worker(env: dict[str, str], log: Path, kill_at: int | None, trace: Path) -> int:
    """Fork a worker running `introloop run --once`; returns its pid. `kill_at`: None to
    leave it alone, else instrument it (0 = only count)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    # the child: never return into pytest, and never run its atexit handlers (they would stop
    # the test servers): leave with os._exit only
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(env)
        state = _instrument(kill_at, trace) if kill_at is not None else None
        from service.cli import main

        try:
            main(["--env-file", "/nonexistent", "run", "--once"], standalone_mode=False)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        if state is not None:
            trace.write_text(f"{state['n']} (no kill)\n")
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def wait_pid(pid: int, timeout: float = 60) -> int:
    """Exit status of `pid` (negative: killed by that signal)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"worker {pid} did not finish in {timeout} s")
        time.sleep(0.01)


# ----------------------------------------------------------------------------- mail


def empty(stack: Any, users: list[str]) -> None:
    """Empty INBOX and Sent of `users`."""
    for user in users:
        with stack.imap(user) as c:
            for folder in ("INBOX", "Sent"):
                with contextlib.suppress(Exception):
                    c.select_folder(folder)
                    uids = c.search("ALL")
                    if uids:
                        c.delete_messages(uids)
                        c.expunge()
                    c.unselect_folder()


def put(stack: Any, raws: list[bytes]) -> None:
    """Deliver straight into the service INBOX (as Dovecot's LMTP would)."""
    with stack.imap(SERVICE) as c:
        for raw in raws:
            c.append("INBOX", raw)


def intro(seed: int, i: int, a: str, b: str) -> bytes:
    m = EmailMessage()
    m["From"] = W.REFERRERS[i % 2]
    m["To"] = f"{a}, {b}"
    m["Subject"] = f"Intro {seed}.{i}"
    m["Message-ID"] = f"<kill-{seed}-{i}@example.test>"
    m.set_content(f"You two should talk ({seed}.{i}).")
    return m.as_bytes()


def answers(e2e: Any, users: list[str], seed: int) -> list[bytes]:
    """Each person's answer to the request they received (as their mail client writes it)."""
    out = []
    for user in users:
        for req in e2e.from_service(user):
            m = EmailMessage()
            m["From"] = user
            m["To"] = str(req["Reply-To"])
            m["Subject"] = "Re: " + str(req["Subject"])
            m["Message-ID"] = f"<answer-{seed}-{user.split('@')[0]}@example.test>"
            m["In-Reply-To"] = m["References"] = req["Message-ID"]
            m.set_content("It went great, thank you! We are already working together.")
            out.append(m.as_bytes())
    return out


def flagged_ok(stack: Any, engine: sa.Engine) -> list[str]:
    """Messages flagged $Introloop whose bytes are not in the database (should be none)."""
    fl = _load("test_faults").flagged_hashes(stack)
    with engine.connect() as conn:
        stored = {r[0] for r in conn.execute(sa.text("select content_hash from inbound"))}
    return [f"uid {u}" for u, (h, flag) in fl.items() if flag and h not in stored]


def settle(stack: Any, engine: sa.Engine, users: list[str], timeout: float = 30) -> None:
    """Wait until Postfix has delivered every sent row (and a moment for any extra copy)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = W.outbox_rows(engine)
        seen = W.delivered(stack, users)
        if all(r.message_id in seen for r in rows if r.status == "sent"):
            break
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)
    time.sleep(0.5)


# ----------------------------------------------------------------------------- the test


class Batch:
    """One seed's world: its database, environment, people and worker logs."""

    def __init__(self, e2e: Any, pg_cluster: Any, seed: int, logdir: Path, template: str):
        self.e2e, self.stack, self.seed = e2e, e2e.stack, seed
        self.name = f"kill_{seed}_{os.urandom(3).hex()}"
        # a copy of a migrated database with the members in it: much faster than migrating
        pg_cluster._admin(f'CREATE DATABASE "{self.name}" TEMPLATE "{template}"')
        self.url = pg_cluster.url(self.name)
        self.engine = make_engine(self.url)
        self.people = W.people(2 * N_INTROS)
        self.logdir = logdir
        self.runs = 0
        env = W.worker_env(e2e, self.url, INTROLOOP_CLAIM_LEASE="1s",
                           INTROLOOP_MAILBOX_LEASE="1s",
                           INTROLOOP_SECRET=f"kill-seed-{seed}-0123456789abcdef")
        self.env = {**os.environ, **env, "INTROLOOP_LOG_LEVEL": "INFO"}

    def worker(self, kill_at: int | None = None) -> tuple[int, Path]:
        self.runs += 1
        trace = self.logdir / f"trace{self.runs}"
        pid = fork_worker(self.env, self.logdir / f"run{self.runs}.log", kill_at, trace)
        return pid, trace

    def finish(self) -> None:
        """Fresh workers until nothing is left (leases of a killed worker expire in 1 s)."""
        time.sleep(1.2)
        for _ in range(4):
            pid, _ = self.worker()
            assert wait_pid(pid) == 0, self.log()
            left = W.scalar(self.engine, "select count(*) from inbound where status <> "
                            "'processed'") + W.scalar(self.engine, "select count(*) from "
                                                      "outbox where status <> 'sent'")
            if not left:
                return
            time.sleep(1.2)

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.logdir.glob("run*.log")))

    def close(self, pg_cluster: Any) -> None:
        self.engine.dispose()
        pg_cluster.drop_database(self.name)


@pytest.fixture
def world(mailstack: Any, tmp_path: Path) -> Any:
    """Like the `e2e` fixture, without emptying every mailbox of the stack (each seed empties
    only the few it uses: much faster over twenty seeds)."""
    support = _load("support")
    return support.E2E(mailstack, tmp_path / "data")


def run_phase(b: Batch, phase: int, kill: tuple[str, float] | None) -> dict[str, Any]:
    """Put the phase's mail in, run a worker (killed as told), finish, check exactly-once."""
    stack, people = b.stack, b.people
    everyone = people + list(W.REFERRERS)
    if phase == 1:
        pairs = [(people[2 * i], people[2 * i + 1]) for i in range(N_INTROS)]
        put(stack, [intro(b.seed, i, a, c) for i, (a, c) in enumerate(pairs)])
    else:
        put(stack, answers(b.e2e, people, b.seed))
    info: dict[str, Any] = {"phase": phase}
    t0 = time.monotonic()
    if kill is None:
        pid, trace = b.worker(kill_at=0)
        assert wait_pid(pid) == 0, b.log()
        info["points"] = int(trace.read_text().split()[0])
    elif kill[0] == "point":
        pid, trace = b.worker(kill_at=int(kill[1]))
        code = wait_pid(pid)
        info["killed"] = trace.read_text().strip() if code == -signal.SIGKILL else "no kill"
    else:
        pid, _ = b.worker()
        time.sleep(kill[1])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        code = wait_pid(pid)
        info["killed"] = f"after {kill[1]:.3f} s" if code == -signal.SIGKILL else "no kill"
    info["seconds"] = time.monotonic() - t0
    # right after the kill: nothing flagged on the server whose bytes are not stored
    assert not flagged_ok(stack, b.engine), (info, b.log())
    in_doubt = {r.message_id for r in W.outbox_rows(b.engine) if r.status == "sending"}
    b.finish()
    settle(stack, b.engine, everyone)
    kinds = dict(b.engine.connect().execute(sa.text(
        "select kind, count(*) from inbound group by kind")).all())
    want = {"intro": N_INTROS} if phase == 1 else {"intro": N_INTROS, "reply": 2 * N_INTROS}
    assert kinds == want, (info, kinds, b.log())
    assert W.scalar(b.engine, "select count(*) from referral") == N_INTROS
    rows = W.outbox_rows(b.engine)
    seen = W.delivered(stack, everyone)
    dupes = {m: n for m, n in seen.items() if n > 1}
    if dupes and kill is not None and kill[0] == "time" and set(dupes) <= in_doubt:
        info["in_doubt_duplicate"] = sorted(dupes)  # the documented window, reported
        seen = seen.__class__({m: 1 for m in seen})
    assert not dupes or "in_doubt_duplicate" in info, (info, dupes, b.log())
    assert all(r.status == "sent" for r in rows), (info, rows, b.log())
    assert {r.message_id for r in rows} == set(seen), (info, rows, dict(seen))
    info["sent"] = len(rows)
    return info


@pytest.fixture(scope="module")
def template(mailstack: Any, pg_cluster: Any, tmp_path_factory: Any) -> Iterator[str]:
    """A migrated database with the members, copied for each seed (CREATE … TEMPLATE)."""
    name = f"kill_template_{os.urandom(3).hex()}"
    url = pg_cluster.create_database(name)
    world = _load("support").E2E(mailstack, tmp_path_factory.mktemp("template"))
    world.env["INTROLOOP_DATABASE_URL"] = url
    for r in W.REFERRERS:
        world.cli("members", "add", r)
    # the CLI's engines keep pooled connections open; a template must have none
    pg_cluster._admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")
    yield name
    pg_cluster.drop_database(name)


def _batch(world: Any, pg_cluster: Any, seed: int, tmp_path: Path, template: str) -> Batch:
    W.seed_people(world.stack, 2 * N_INTROS)
    b = Batch(world, pg_cluster, seed, tmp_path, template)
    world.env.update({k: v for k, v in b.env.items() if k.startswith("INTROLOOP_")})
    empty(world.stack, [SERVICE, *b.people, *W.REFERRERS])
    return b


def test_kill_points_and_durations_of_a_whole_batch(world: Any, pg_cluster: Any, template: str,
                                                    tmp_path: Path, capsys: Any) -> None:
    """Without a kill: how many instrumented points each phase passes (the seeds draw their
    kill point from POINT_BUDGET, which must match) and how long it takes."""
    b = _batch(world, pg_cluster, 0, tmp_path, template)
    try:
        one, two = run_phase(b, 1, None), run_phase(b, 2, None)
    finally:
        b.close(pg_cluster)
    with capsys.disabled():
        print(f"\nbatch without a kill: phase 1 {one['points']} points {one['seconds']:.2f} s; "
              f"phase 2 {two['points']} points {two['seconds']:.2f} s")
    assert (one["points"], two["points"]) == (POINT_BUDGET[1], POINT_BUDGET[2]), \
        "update POINT_BUDGET to the counts measured here"


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_at_random_points_loses_and_doubles_nothing(
        seed: int, world: Any, pg_cluster: Any, template: str, tmp_path: Path,
        capsys: Any) -> None:
    rng = random.Random(seed)
    b = _batch(world, pg_cluster, seed, tmp_path, template)
    reports = []
    try:
        phase = rng.choice([1, 2])
        timed = seed % 5 == 0
        if phase == 2:
            reports.append(run_phase(b, 1, None))
        kill = ("time", rng.uniform(0.05, TIME_BUDGET[phase])) if timed \
            else ("point", rng.randint(1, POINT_BUDGET[phase]))
        reports.append(run_phase(b, phase, kill))
    finally:
        b.close(pg_cluster)
    with capsys.disabled():
        print(f"\nseed {seed}: " + "; ".join(
            f"phase {r['phase']}: {r.get('killed', 'no kill')}, {r['sent']} sent once"
            + (f", IN-DOUBT DUPLICATE {r['in_doubt_duplicate']}" if "in_doubt_duplicate" in r
               else "") for r in reports))


# instrumented points a whole phase passes (measured and kept honest by
# test_kill_points_and_durations_of_a_whole_batch) and seconds it takes (for timed kills)
POINT_BUDGET = {1: 38, 2: 71}
TIME_BUDGET = {1: 0.9, 2: 1.0}

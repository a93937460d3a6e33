"""Ingest throughput from a real Dovecot mailbox, next to the raw cost of the libraries.

Starts its own Dovecot + Postfix (and PostgreSQL for --workers) with tests/servers.py, seeds
the service mailbox with MESSAGES messages by IMAP MULTIAPPEND (half intros from members,
half replies carrying a reply token, a third of them multipart/alternative), then measures
in one run:

  raw      imapclient FETCH BODY.PEEK[] in batches of 100 + email.message_from_bytes
           (policy.default) + get_body().get_content() of every message: what the libraries
           alone cost for the same bytes;
  sqlite   one `introloop` worker on SQLite: fetch (store raw bytes, flag) then process
           (claim, read, decide, queue); its peak RSS (ru_maxrss) and RSS before the work;
  pg N     N worker processes on one PostgreSQL database (one reads the mailbox, all
           process), for each N in --workers; wall time until every message is processed.

Prints figures; never fails on time. Needs root (the mail servers) and the Debian packages
dovecot-imapd, dovecot-lmtpd, postfix, postgresql.

    .venv/bin/python bench/ingest.py                      # 5000 messages, workers 1,2,4
    .venv/bin/python bench/ingest.py --messages 1000 --workers 1
    .venv/bin/python bench/ingest.py --profile out.txt    # also py-spy the SQLite worker
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "referrals@example.test"
SECRET = "bench-secret-0123456789abcdef"
MEMBERS = [f"m{i:02d}@members.example" for i in range(40)]


def load_servers() -> Any:
    """tests/servers.py, imported by path (the tests directory is not a package)."""
    spec = importlib.util.spec_from_file_location("introloop_bench_servers",
                                                  ROOT / "tests" / "servers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- messages

WORDS = ["meet", "talk", "pilot", "budget", "quarter", "hiring", "design", "launch",
         "product", "team", "call", "coffee", "agency", "partner", "contract", "intro",
         "follow", "week", "roadmap", "invoice", "sales", "growth"]


def _text(i: int, n: int) -> str:
    words = [WORDS[(i * 7 + k * 13) % len(WORDS)] for k in range(n)]
    return "\n".join(" ".join(words[j:j + 12]) for j in range(0, len(words), 12))


def make_messages(n: int) -> list[bytes]:
    """n//2 intros (parties a<i>, b<i>) then n - n//2 replies from a<i> with its token.

    Party ids are predictable (intro i creates parties 2i+1 and 2i+2 in a fresh database
    processed in order), so the replies' tokens name real parties most of the time."""
    from service.core import tokens as tk

    intros = n // 2
    out = []
    for i in range(intros):
        member = MEMBERS[i % len(MEMBERS)]
        body = f"Hi both,\n\n{_text(i, 60)}\n\nYou two should talk.\n\nBest,\n{member}\n"
        head = (f"From: Member {i % 40} <{member}>\r\nTo: Ann {i} <a{i}@people.example>, "
                f"Bo {i} <b{i}@people.example>\r\nBcc: {SERVICE}\r\nSubject: Intro: Ann <> Bo "
                f"({i})\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\n"
                f"Message-ID: <bench-intro-{i}@members.example>\r\nMIME-Version: 1.0\r\n")
        out.append(_mime(head, body, alternative=i % 3 == 0))
    for j in range(n - intros):
        i = j % intros
        token = tk.make_token(SECRET.encode(), 2 * i + 1, "x")
        body = (f"It went really well, thank you! {_text(j, 25)}\n\n"
                f"On Mon, 23 Nov 2026, Introloop <{SERVICE}> wrote:\n"
                + "\n".join("> " + line for line in _text(i, 80).splitlines()) + "\n")
        head = (f"From: Ann {i} <a{i}@people.example>\r\nTo: {tk.plus_address(SERVICE, token)}"
                f"\r\nSubject: Re: How did it go with Bo?\r\nDate: Tue, 24 Nov 2026 10:00:00 "
                f"+0000\r\nMessage-ID: <bench-reply-{j}@people.example>\r\n"
                f"In-Reply-To: <request-{i}@example.test>\r\nMIME-Version: 1.0\r\n")
        out.append(_mime(head, body, alternative=j % 3 == 1))
    return out


def _mime(head: str, text: str, alternative: bool) -> bytes:
    text = text.replace("\n", "\r\n")
    if not alternative:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text).encode()
    html = "<html><body>" + "".join(f"<p>{line}</p>" for line in text.split("\r\n")) + \
        "</body></html>"
    return (head + 'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n--b\r\n"
            "Content-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n--b--\r\n").encode()


def seed(stack: Any, messages: list[bytes]) -> float:
    """MULTIAPPEND the messages into the service INBOX (100 per command); seconds taken."""
    t0 = time.perf_counter()
    with stack.imap(SERVICE, timeout=120) as c:
        for k in range(0, len(messages), 100):
            c.multiappend("INBOX", messages[k:k + 100])
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- raw cost


def raw_cost(stack: Any) -> dict[str, float]:
    """Fetch every message as the adapter does (BODY.PEEK[], 100 per FETCH) and parse it."""
    t0 = time.perf_counter()
    raws: list[bytes] = []
    with stack.imap(SERVICE, timeout=120) as c:
        c.select_folder("INBOX", readonly=True)
        uids = sorted(c.search("ALL"))
        for k in range(0, len(uids), 100):
            data = c.fetch(uids[k:k + 100], ["BODY.PEEK[]"])
            raws.extend(bytes(data[u][b"BODY[]"]) for u in uids[k:k + 100])
    fetched = time.perf_counter()
    for raw in raws:
        msg = message_from_bytes(raw, policy=policy.default)
        str(msg["From"]), str(msg["Subject"])
        body = msg.get_body(("plain", "html"))  # type: ignore[attr-defined]
        if body is not None:
            body.get_content()
    done = time.perf_counter()
    return {"n": len(raws), "fetch_s": fetched - t0, "parse_s": done - fetched,
            "total_s": done - t0}


# ----------------------------------------------------------------------------- workers


def worker_env(stack: Any, data_dir: Path, db_url: str) -> dict[str, str]:
    """The settings of a bench worker (no outgoing mail: the feedback delay is days)."""
    return {
        **os.environ,
        "INTROLOOP_ADDRESS": SERVICE, "INTROLOOP_NETWORK_NAME": "Bench",
        "INTROLOOP_SECRET": SECRET, "INTROLOOP_OPERATOR": "operator@example.test",
        "INTROLOOP_IMAP_HOST": stack.host, "INTROLOOP_IMAP_PORT": str(stack.imap_port),
        "INTROLOOP_IMAP_TLS": "none", "INTROLOOP_IMAP_USER": SERVICE,
        "INTROLOOP_IMAP_PASSWORD": stack.password(SERVICE),
        "INTROLOOP_SMTP_HOST": stack.host, "INTROLOOP_SMTP_PORT": str(stack.smtp_port),
        "INTROLOOP_SMTP_TLS": "none", "INTROLOOP_DATA_DIR": str(data_dir),
        "INTROLOOP_DATABASE_URL": db_url, "INTROLOOP_FEEDBACK_DELAY": "3d",
        "INTROLOOP_ALLOW_SENDERS": "@members.example", "INTROLOOP_SENDER_HOURLY_LIMIT": "0",
        "INTROLOOP_TIMEZONE": "UTC", "INTROLOOP_QUIET_HOURS": "",
        "INTROLOOP_LOG_LEVEL": "INFO",
    }


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker(expected: int, go: Path) -> None:
    """One worker process: build the loop, wait for `go`, then fetch (if it holds the
    mailbox) and process until all `expected` messages are processed; print JSON."""
    import sqlalchemy as sa

    from service.app import build_loop
    from service.config import load_settings
    from service.logs import setup_logging

    setup_logging()
    loop = build_loop(load_settings(None))
    rss_ready = _rss_kb()
    print(json.dumps({"ready": True}), flush=True)
    while not go.exists():
        time.sleep(0.005)
    t0 = time.time()
    fetch_s = process_s = 0.0
    fetched = processed = 0
    while True:
        t = time.perf_counter()
        fetched += loop.fetch().fetched
        fetch_s += time.perf_counter() - t
        t = time.perf_counter()
        processed += len(loop.process_pending().processed)
        process_s += time.perf_counter() - t
        with loop.engine.connect() as conn:
            total, left = conn.execute(sa.text(
                "select count(*), count(*) filter (where status in ('new', 'claimed')) "
                "from inbound")).one()
        if total >= expected and left == 0:
            break
        time.sleep(0.02)
    end = time.time()
    print(json.dumps({
        "start": t0, "end": end, "fetched": fetched, "processed": processed,
        "fetch_s": fetch_s, "process_s": process_s, "rss_ready_kb": rss_ready,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }), flush=True)


def run_workers(env: dict[str, str], n: int, expected: int, tmp: Path,
                profile: Path | None = None) -> dict[str, Any]:
    """Start n workers, release them together, wait; their reports and the wall time."""
    go = tmp / f"go-{time.time_ns()}"
    procs = []
    for i in range(n):
        cmd = [sys.executable, __file__, "worker", str(expected), str(go)]
        if profile is not None and i == 0:
            spy = shutil.which("py-spy") or "py-spy"
            cmd = [spy, "record", "--format", "raw", "-o", str(profile), "--", *cmd]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=open(tmp / f"worker{i}.log", "ab"),  # noqa: SIM115
                                      text=True, cwd=ROOT))
    for p in procs:
        assert p.stdout is not None
        while "ready" not in (line := p.stdout.readline()):  # py-spy may print first
            assert line, (tmp / "worker0.log").read_text()[-2000:]
    t0 = time.time()
    go.touch()
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=3600)
        reports.append(json.loads(next(x for x in reversed(out.strip().splitlines())
                                       if x.startswith("{"))))
    return {"wall_s": max(r["end"] for r in reports) - t0, "workers": reports}


def migrate(url: str) -> None:
    """Create the schema once, before several workers start on the database."""
    from service.adapters.db import make_engine
    from service.adapters.db import migrate as do_migrate

    engine = make_engine(url)
    do_migrate(engine)
    engine.dispose()


# ----------------------------------------------------------------------------- main


def start_mail_stack(prefix: str) -> tuple[Path, Any]:
    """A throwaway Dovecot + Postfix under a new temp dir (the service and operator mailboxes).

    Exits with the one-line reason when the servers cannot be started here.
    """
    servers = load_servers()
    missing = servers.MailStack.missing()
    if missing:
        raise SystemExit("cannot start the mail servers: " + "; ".join(missing))
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    tmp.chmod(0o711)  # Dovecot's and Postfix's users must traverse it
    return tmp, servers.MailStack.start(tmp / "mail", [SERVICE, "operator@example.test"])


def main() -> None:
    """Parse arguments, start servers, seed, measure, print."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--workers", default="1,2,4", help="PostgreSQL worker counts ('' to skip)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="py-spy raw profile of the SQLite worker to this file")
    args = ap.parse_args()
    servers = load_servers()
    tmp, stack = start_mail_stack("introloop-bench-")
    cluster = None
    try:
        t = time.perf_counter()
        messages = make_messages(args.messages)
        gen_s = time.perf_counter() - t
        size = sum(map(len, messages)) / len(messages)
        seed_s = seed(stack, messages)
        print(f"{len(messages)} messages ({args.messages // 2} intros, the rest replies), "
              f"mean {size:.0f} bytes; generated in {gen_s:.1f} s, MULTIAPPEND {seed_s:.1f} s")
        raw_cost(stack)  # warm Dovecot's index and the page cache, as the next runs see them
        raw = raw_cost(stack)
        print(f"raw      imapclient fetch {raw['fetch_s']:.2f} s + email parse "
              f"{raw['parse_s']:.2f} s = {raw['total_s']:.2f} s "
              f"({raw['n'] / raw['total_s']:.0f} msg/s)")

        env = worker_env(stack, tmp / "sqlite", f"sqlite:///{tmp / 'sqlite' / 'i.db'}")
        migrate(env["INTROLOOP_DATABASE_URL"])
        res = run_workers(env, 1, len(messages), tmp, args.profile)
        w = res["workers"][0]
        print(f"sqlite 1 worker: {res['wall_s']:.2f} s ({len(messages) / res['wall_s']:.0f} "
              f"msg/s; fetch+store {w['fetch_s']:.2f} s, process {w['process_s']:.2f} s); "
              f"{res['wall_s'] / raw['total_s']:.1f}x the raw fetch+parse; peak RSS "
              f"{w['maxrss_kb'] / 1024:.0f} MB (at start {w['rss_ready_kb'] / 1024:.0f} MB)")

        counts = [int(x) for x in args.workers.split(",") if x.strip()]
        if counts:
            missing = servers.PgCluster.missing()
            if missing:
                print("PostgreSQL skipped: " + "; ".join(missing))
                counts = []
            else:
                cluster = servers.PgCluster.start(tmp / "pg")
        for n in counts:
            assert cluster is not None
            url = cluster.create_database(f"bench_{n}")
            migrate(url)
            res = run_workers(worker_env(stack, tmp / f"pg{n}", url), n, len(messages), tmp)
            shares = sorted(r["processed"] for r in res["workers"])
            rss = max(r["maxrss_kb"] for r in res["workers"]) / 1024
            reader = max(res["workers"], key=lambda r: r["fetched"])
            print(f"pg {n} worker{'s' if n > 1 else ' '}: {res['wall_s']:.2f} s "
                  f"({len(messages) / res['wall_s']:.0f} msg/s); the reader's fetch+store "
                  f"{reader['fetch_s']:.2f} s; processed per worker {shares}; "
                  f"peak RSS per worker up to {rss:.0f} MB")
            cluster.drop_database(f"bench_{n}")
        print(f"machine: {os.cpu_count()} CPUs; load average now "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        if cluster is not None:
            cluster.stop()
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.path.insert(0, str(ROOT))
        worker(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()

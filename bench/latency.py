"""Latency from SMTP delivery of an intro to the referral being recorded, with IMAP IDLE.

Starts its own Dovecot + Postfix (tests/servers.py) and one `introloop run` worker (SQLite,
IDLE on the service mailbox), then sends COUNT intros over SMTP one after the other. For each:
t0 = Postfix accepted the message (smtplib's sendmail returned), stored = the worker committed
its raw bytes (inbound.received_at), recorded = the referral row was committed
(referral.created_at). Prints p50/p95/max of each span; never fails on time.

    .venv/bin/python bench/latency.py            # 100 intros, 1 s apart
    .venv/bin/python bench/latency.py 100 0      # back to back: they arrive mid-processing
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest

SERVICE = ingest.SERVICE


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main(count: int = 100, gap: float = 1.0) -> None:
    """Start the servers and a worker, send `count` intros `gap` seconds apart (after the
    previous one was recorded, so the worker is back in IDLE), print the latency figures."""
    tmp, stack = ingest.start_mail_stack("introloop-latency-")
    url = f"sqlite:///{tmp / 'data' / 'i.db'}"
    env = ingest.worker_env(stack, tmp / "data", url)
    ingest.migrate(url)
    engine = sa.create_engine(url)
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--env-file", "/nonexistent",
                             "run"], env=env, stderr=log, stdout=subprocess.DEVNULL,
                            cwd=ingest.ROOT)
    spans: dict[str, list[float]] = {"stored": [], "recorded": [], "processing": []}
    try:
        deadline = time.monotonic() + 60
        while b'"imap_connected"' not in (tmp / "worker.log").read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit((tmp / "worker.log").read_text()[-2000:])
            time.sleep(0.05)
        time.sleep(1)  # into IDLE
        for i in range(count):
            mid = f"latency-{i}-{os.urandom(4).hex()}@members.example"
            raw = (f"From: {ingest.MEMBERS[i % 40]}\r\nTo: a{i}@people.example, "
                   f"b{i}@people.example\r\nSubject: Intro {i}\r\nMessage-ID: <{mid}>\r\n"
                   "Content-Type: text/plain\r\n\r\nYou two should talk.\r\n").encode()
            stack.send(raw, ingest.MEMBERS[i % 40], [SERVICE])
            t0 = time.time()
            row = None
            while row is None:
                with engine.connect() as conn:
                    row = conn.execute(sa.text(
                        "select r.created_at, i.received_at from referral r join inbound i "
                        "on i.id = r.inbound_id where r.intro_message_id = :m"), {"m": mid}
                    ).first()
                if row is None:
                    if time.time() - t0 > 60:
                        raise SystemExit(f"intro {i} not recorded after 60 s")
                    time.sleep(0.005)
            recorded, stored = (_epoch(v) for v in row)
            spans["stored"].append(stored - t0)
            spans["recorded"].append(recorded - t0)
            spans["processing"].append(recorded - stored)
            time.sleep(gap)
        print(f"{count} intros, one at a time, {gap:g} s after the previous one was recorded "
              "(the worker is in IMAP IDLE), SQLite:")
        for name, label in (("stored", "SMTP accepted -> raw bytes stored"),
                            ("processing", "stored -> referral recorded"),
                            ("recorded", "SMTP accepted -> referral recorded")):
            v = [x * 1000 for x in spans[name]]
            print(f"  {label:38s} p50 {statistics.median(v):6.0f} ms  p95 {_pct(v, 95):6.0f} ms"
                  f"  max {max(v):6.0f} ms")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _epoch(value: object) -> float:
    if isinstance(value, str):  # SQLite hands back text; it is UTC
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    if value.tzinfo is None:
        from datetime import UTC

        value = value.replace(tzinfo=UTC)
    return value.timestamp()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100,
         float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)

"""The same service on PostgreSQL: migrations, the conversation tests, and the CLI end to end.

The conversation tests of tests/test_loop.py and the end-to-end test of test_e2e_servers.py
are loaded by path and run again here with INTROLOOP_DATABASE_URL pointing at a fresh
PostgreSQL database (the `pg_url` fixture), so both backends run the very same assertions
without those files knowing about PostgreSQL.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel, select

from service.adapters.db import alembic_config, make_engine, migrate
from service.adapters.tables import Heartbeat, Inbound
from service.app import FrozenClock, build_loop
from service.queries import add_member

pytestmark = pytest.mark.servers
TESTS = Path(__file__).resolve().parent


def _load(name: str) -> ModuleType:
    """Import tests/<name>.py under a private module name (the tests dir is not a package)."""
    key = f"introloop_pg_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, TESTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


loop_tests = _load("test_loop")


# ----------------------------------------------------------------------------- migrations


def test_migrations_match_the_tables_on_postgres(pg_url: str) -> None:
    engine = make_engine(pg_url)
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], f"PostgreSQL schema differs from the tables: {diff}"


def test_migrations_downgrade_and_upgrade_again_on_postgres(pg_url: str) -> None:
    engine = make_engine(pg_url)
    migrate(engine)
    command.downgrade(alembic_config(engine), "base")
    with engine.connect() as conn:
        left = set(sa.inspect(conn).get_table_names()) - {"alembic_version"}
    assert left == set()
    migrate(engine)
    with engine.connect() as conn:
        assert "inbound" in sa.inspect(conn).get_table_names()


def test_timestamps_come_back_aware_utc(pg_url: str) -> None:
    engine = make_engine(pg_url)
    migrate(engine)
    moment = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    from sqlmodel import Session

    with Session(engine) as s, s.begin():
        s.add(Heartbeat(name="t", at=moment))
    with Session(engine) as s:
        at = s.get(Heartbeat, "t").at
    assert at == moment and at.utcoffset() is not None


# ----------------------------------------------------------------------------- the loop


def _pg_settings(pg_url: str) -> Callable[..., Any]:
    real = loop_tests.settings

    def settings(tmp: Path, **over: Any) -> Any:
        over.setdefault("database_url", pg_url)
        return real(tmp, **over)

    return settings


WORLD_TESTS = sorted(
    name for name, fn in vars(loop_tests).items()
    if name.startswith("test_") and callable(fn)
)


@pytest.mark.parametrize("name", WORLD_TESTS)
def test_conversation_on_postgres(name: str, pg_url: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each conversation test of test_loop.py, unchanged, on a fresh PostgreSQL database."""
    monkeypatch.setattr(loop_tests, "settings", _pg_settings(pg_url))
    fn = getattr(loop_tests, name)
    args: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters:
        if param == "world":
            st = loop_tests.settings(tmp_path)
            loop = build_loop(st, clock=FrozenClock(loop_tests.START))
            add_member(st, "alice@example.com", "Alice Martin", None, ())
            assert loop.engine.dialect.name == "postgresql"
            args["world"] = (loop, loop.clock)
        elif param == "tmp_path":
            args["tmp_path"] = tmp_path
        elif param == "monkeypatch":
            args["monkeypatch"] = monkeypatch
        else:
            raise AssertionError(f"{name} wants fixture {param!r}: teach this test about it")
    fn(**args)
    with make_engine(pg_url).connect() as conn:  # it really ran on PostgreSQL
        assert conn.execute(sa.text("select count(*) from member")).scalar_one() >= 1


def _outcome(db_url: str | None, tmp: Path, raw: bytes) -> tuple[str, str | None, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    st = loop_tests.settings(tmp, database_url=db_url)
    loop = build_loop(st, clock=FrozenClock(loop_tests.START))
    add_member(st, "alice@example.com", "Alice Martin", None, ())
    loop.mailbox.deliver(raw)
    loop.run_once()
    with loop.session() as s:
        row = s.exec(select(Inbound)).one()
        return row.status, row.kind, (row.reason or "").split(":")[0]


HOSTILE = {
    "nul": ("From: Alice Martin <alice@example.com>\r\n"
            "To: Bob <bob@acme.example>, Carol <carol@studio.example>\r\n"
            "Subject: Intro\x00 with a NUL\r\nMessage-ID: <nul-1@example.com>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nBob, meet Carol.\x00\r\n"),
    "long-address": ("From: Alice Martin <alice@example.com>\r\n"
                     "To: Bob <bob@acme.example>, " + "x" * 400 + "@a.example\r\n"
                     "Subject: Intro\r\nMessage-ID: <long-1@example.com>\r\n"
                     "Content-Type: text/plain\r\n\r\nBob, meet X.\r\n"),
    "long-subject": ("From: Alice Martin <alice@example.com>\r\n"
                     "To: Bob <bob@acme.example>, Carol <carol@studio.example>\r\n"
                     "Subject: " + "y " * 3000 + "\r\nMessage-ID: <" + "m" * 1200 + "@x>\r\n"
                     "Content-Type: text/plain\r\n\r\nBob, meet Carol.\r\n"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_values_end_the_same_on_both_backends(case: str, pg_url: str,
                                                      tmp_path: Path) -> None:
    """NULs and overlong values: PostgreSQL refuses what SQLite stores; the guard in
    adapters/db.py makes the outcome identical (and never a raw DataError)."""
    raw = HOSTILE[case].encode("utf-8", "surrogateescape")
    on_sqlite = _outcome(None, tmp_path / "lite", raw)
    on_pg = _outcome(pg_url, tmp_path / "pg", raw)
    assert on_sqlite == on_pg, (on_sqlite, on_pg)
    assert on_pg[2] != "DataError"
    if case == "nul":
        assert on_pg[:2] == ("processed", "intro")


# ----------------------------------------------------------------------------- CLI end to end

E2E_TESTS = [
    ("test_e2e_servers", "test_whole_loop_on_real_servers"),
    ("test_e2e_servers", "test_out_of_office_changes_nothing_and_gets_no_answer"),
    ("test_imap_adapter", "test_uidvalidity_change_rereads_without_double_processing"),
    ("test_e2e_replies", "test_hard_bounce_of_a_request_stops_mail_to_that_address"),
    ("test_e2e_replies", "test_unclear_answer_settled_by_the_operators_one_word_reply"),
]


@pytest.mark.parametrize(("module", "name"), E2E_TESTS, ids=[n for _, n in E2E_TESTS])
def test_cli_end_to_end_on_postgres(module: str, name: str, e2e: Any, pg_url: str) -> None:
    """The real CLI against Postfix + Dovecot, with INTROLOOP_DATABASE_URL on PostgreSQL."""
    e2e.env["INTROLOOP_DATABASE_URL"] = pg_url
    getattr(_load(module), name)(e2e)
    with make_engine(pg_url).connect() as conn:
        assert conn.execute(sa.text("select count(*) from referral")).scalar_one() >= 1

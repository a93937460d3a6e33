"""Database engine and migrations. SQLite (WAL) is the embedded default; PostgreSQL scales out."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Mapper

from service.adapters import tables  # noqa: F401  (registers the tables on the metadata)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


class DatabaseError(Exception):
    """The database cannot be reached or used; the message is one line naming the fix."""


class ValueTooLong(ValueError):
    """A value does not fit its column. PostgreSQL refuses it and SQLite would silently store
    it; checking before the INSERT makes both backends fail the same way, with a clear line."""


def is_postgres(engine: Engine) -> bool:
    """True on PostgreSQL (row locks and SKIP LOCKED work), False on SQLite."""
    return engine.dialect.name == "postgresql"


def put_heartbeat(s: Any, name: str, at: Any, detail: str = "", *, keep_at: bool = False,
                  only_new: bool = False) -> None:
    """Write heartbeat `name` in one statement (an upsert): several workers write the same
    names at the same moment, and read-then-insert races into a unique-key error.

    `keep_at`: an existing row keeps its time (e.g. "failing since"); `only_new`: an existing
    row is left alone."""
    from sqlalchemy.dialects import postgresql, sqlite

    from service.adapters.tables import Heartbeat

    insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    table = Heartbeat.__table__  # type: ignore[attr-defined]
    stmt = insert(table).values(name=name, at=at, detail=detail)
    if only_new:
        stmt = stmt.on_conflict_do_nothing(index_elements=[table.c.name])
    else:
        update = {"detail": detail} if keep_at else {"at": at, "detail": detail}
        stmt = stmt.on_conflict_do_update(index_elements=[table.c.name], set_=update)
    s.execute(stmt)


def unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be used right now (down, unreachable, locked,
    read-only, disk full), as opposed to a problem with the data being written."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        # PostgreSQL in recovery or with default_transaction_read_only
        return "read-only transaction" in str(exc.orig)
    return False


def make_engine(url: str) -> Engine:
    """An engine for `url`, with the per-connection settings each backend needs."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        _sqlite_setup(engine)
        return engine
    if url.startswith("postgresql://"):
        # SQLAlchemy 2.1 picks the driver for a bare postgresql:// URL; name psycopg 3 explicitly
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # pre-ping: a worker outlives database restarts; a dead pooled connection is replaced
    # instead of failing the next unit of work
    return sa.create_engine(url, pool_pre_ping=True)


def _sqlite_setup(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # pysqlite's own transaction handling issues a deferred BEGIN, with which two writers
        # can deadlock on lock upgrade; switch it off and emit BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean_values(_mapper: Mapper[Any], _conn: sa.Connection, target: Any) -> None:
    """Before every ORM INSERT/UPDATE: make text values storable the same way on both backends.

    - NUL characters: legal in SQLite text, refused by PostgreSQL ("cannot contain NUL"); they
      never mean anything in mail headers or text, so they become U+FFFD everywhere, as do
      lone surrogates (which neither backend can encode).
    - lengths: PostgreSQL enforces VARCHAR(n), SQLite does not; check here so an overlong
      value fails identically (and readably) on both.
    """
    state = sa.inspect(target)
    for attr in state.mapper.column_attrs:
        value = state.dict.get(attr.key)
        if not isinstance(value, str):
            continue
        clean = value.replace("\x00", "\ufffd") if "\x00" in value else value
        try:
            clean.encode("utf-8")
        except UnicodeEncodeError:
            # lone surrogates (undecodable header bytes kept by surrogateescape): no backend
            # can store them; they become U+FFFD like any other undecodable byte
            clean = _SURROGATE.sub("\ufffd", clean)
        if clean is not value:
            value = clean
            setattr(target, attr.key, value)
        length = getattr(attr.columns[0].type, "length", None)
        if length is not None and len(value) > length:
            table = state.mapper.persist_selectable.name  # type: ignore[attr-defined]
            raise ValueTooLong(
                f"{table}.{attr.key} would be {len(value)} characters, over its limit of {length}"
            )


# every table, both backends (registered once, at import)
sa.event.listen(Mapper, "before_insert", _clean_values)
sa.event.listen(Mapper, "before_update", _clean_values)


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at the packaged migrations and this engine."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # configparser interpolates "%": URL-encoded passwords (p%40ss) must be escaped
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent; run at every start)."""
    try:
        command.upgrade(alembic_config(engine), "head")
    except OperationalError as exc:
        raise DatabaseError(describe_db_error(engine, exc)) from None


def describe_db_error(engine: Engine, exc: BaseException) -> str:
    """One line saying what is wrong with the database and what to do."""
    url = engine.url.render_as_string(hide_password=True)
    text = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else repr(exc)
    if "readonly" in text or "read-only" in text:
        return f"database {url} is read-only: {text}; give the service write access to it"
    if ("disk" in text and "full" in text) or "No space" in text or "could not extend" in text:
        return f"database {url}: disk full ({text}); free space on its volume"
    if "unable to open" in text:
        return f"cannot open database {url}: {text}; check INTROLOOP_DATA_DIR / DATABASE_URL"
    if "locked" in text:
        return f"database {url} is busy ({text}); another process holds a long write lock"
    if ("Connection refused" in text or "could not connect" in text or "connection" in text
            or "shutting down" in text or "terminating" in text):
        return f"cannot reach database {url}: {text}; is the server running?"
    return f"database {url}: {text}"


@contextmanager
def translate_errors(engine: Engine) -> Iterator[None]:
    """Turn "the database cannot be used right now" into DatabaseError with one line.

    Workers catch DatabaseError, say so once and retry; the work stays where it was. Errors
    about the data itself (a unique key, a NOT NULL) pass through unchanged."""
    try:
        yield
    except DBAPIError as exc:
        if not unavailable(exc):
            raise
        raise DatabaseError(describe_db_error(engine, exc)) from exc


def check_database(engine: Engine) -> None:
    """Open a connection and run a trivial query; raise DatabaseError with one line if not."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        raise DatabaseError(describe_db_error(engine, exc)) from None

"""Shared pytest fixtures.

Real servers (``tests/servers.py``): ``mailstack`` and ``pg_cluster`` are started once per
session, ``pg_url`` gives each test a fresh PostgreSQL database. When a server's binaries
are missing the tests that need it are skipped, unless ``INTROLOOP_REQUIRE_SERVERS=1``
(set by ``.ci/run``), which turns the skip into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from servers import MailStack, PgCluster

TESTS_DIR = Path(__file__).resolve().parent


def _load_servers() -> ModuleType:
    """Import ``tests/servers.py`` by path under a name of its own.

    With ``--import-mode=importlib`` and no ``__init__.py`` the tests dir is not on
    sys.path. Adding it would make every file in tests/ importable as a top-level module
    and able to shadow real packages (notes pitfall 11); loading by path changes nothing
    else and does not depend on the working directory.
    """
    name = "introloop_test_servers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS_DIR / "servers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered first: classes resolve their module through it
    spec.loader.exec_module(module)
    return module


servers = _load_servers()


def _load_support() -> ModuleType:
    """Import ``tests/support.py`` (end-to-end helpers) by path, like servers.py."""
    name = "introloop_test_support"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS_DIR / "support.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def e2e(mailstack: MailStack, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh Introloop (own database) against the shared mail stack, mailboxes emptied."""
    mailstack.reset()
    return _load_support().E2E(mailstack, tmp_path / "data")

SERVICE_ADDRESS = "referrals@example.test"
MAIL_USERS = (
    SERVICE_ADDRESS,
    "operator@example.test",
    *(f"{n}@example.test" for n in ("alice", "bob", "carol", "dave", "erin", "frank")),
)


def _require(what: str, missing: list[str]) -> None:
    """Skip (or fail, under INTROLOOP_REQUIRE_SERVERS=1) when ``missing`` is not empty."""
    if not missing:
        return
    reason = f"{what} unavailable, missing: {'; '.join(missing)}"
    if os.environ.get("INTROLOOP_REQUIRE_SERVERS") == "1":
        pytest.fail(f"INTROLOOP_REQUIRE_SERVERS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def server_tmp() -> Iterator[Path]:
    """A directory for this session's servers, removed at the end of the session.

    Not pytest's tmp_path: /tmp/pytest-of-<user> is mode 0700 and pytest resets it to
    0700 at every session start, but Dovecot's auth (user dovecot), Postfix (postfix) and
    PostgreSQL (postgres) must traverse it. A private mkdtemp per session also never meets
    another session's daemons or zombies (notes pitfalls 5 and 11).
    """
    path = Path(tempfile.mkdtemp(prefix="introloop-servers-"))
    path.chmod(0o711)  # others may traverse, not list
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def mailstack(server_tmp: Path) -> Iterator[MailStack]:
    """Dovecot + Postfix with the service mailbox, the operator and six people."""
    _require("mail servers (Dovecot/Postfix)", servers.MailStack.missing())
    stack = servers.MailStack.start(
        Path(tempfile.mkdtemp(prefix="mailstack-", dir=server_tmp)), MAIL_USERS
    )
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def pg_cluster(server_tmp: Path) -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster for the session."""
    _require("PostgreSQL", servers.PgCluster.missing())
    cluster = servers.PgCluster.start(Path(tempfile.mkdtemp(prefix="pg-", dir=server_tmp)))
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """SQLAlchemy URL of a fresh database, dropped after the test."""
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]
    name = f"t_{stem}_{os.urandom(4).hex()}"
    url = pg_cluster.create_database(name)
    yield url
    pg_cluster.drop_database(name)

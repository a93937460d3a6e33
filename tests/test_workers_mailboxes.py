"""Several mailboxes (one per chapter) in one deployment: INTROLOOP_MAILBOXES_FILE.

Unit tests of the file (overrides, secrets from the environment, one-line errors), then two
`introloop run` workers serving two Dovecot mailboxes, each with its own address, members,
templates, timezone and PostgreSQL database.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.config import ConfigError
from service.mailboxes import load_mailboxes, mailbox_names, settings_for

TESTS = Path(__file__).resolve().parent


def _toml(tmp: Path, text: str) -> Path:
    path = tmp / "mailboxes.toml"
    path.write_text(text)
    return path


BASE = {"INTROLOOP_NETWORK_NAME": "Shared", "INTROLOOP_SECRET": "s" * 32,
        "INTROLOOP_IMAP_HOST": "", "INTROLOOP_SMTP_HOST": "", "INTROLOOP_ADDRESS": ""}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("INTROLOOP_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


def test_each_mailbox_overrides_the_shared_settings(env: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    path = _toml(tmp_path, """
[mailboxes.berlin]
address = "berlin@network.example"
timezone = "Europe/Berlin"
network_name = "Berlin Chapter"
[mailboxes.paris]
address = "paris@network.example"
imap_password = "from-the-file"
""")
    env.setenv("INTROLOOP_MAILBOXES_FILE", str(path))
    env.setenv("INTROLOOP_PARIS_IMAP_PASSWORD", "from-the-environment")
    boxes = load_mailboxes("/nonexistent")
    assert list(boxes) == mailbox_names("/nonexistent") == ["berlin", "paris"]
    assert boxes["berlin"].zone.key == "Europe/Berlin"
    assert boxes["berlin"].network_name == "Berlin Chapter"
    assert boxes["paris"].network_name == "Shared"
    assert boxes["paris"].imap_password.get_secret_value() == "from-the-environment"
    # each its own database by default: SQLite under DATA_DIR/<name>
    assert boxes["berlin"].data_dir == tmp_path / "data" / "berlin"
    assert boxes["berlin"].effective_database_url != boxes["paris"].effective_database_url
    assert settings_for("/nonexistent", "berlin").address == "berlin@network.example"


@pytest.mark.parametrize(("text", "problem"), [
    ("[mailboxes.a]\naddress = 'a@x.example'\nimap_hots = 'x'\n", "unknown setting 'imap_hots'"),
    ("[mailboxes.a]\naddress = 'same@x.example'\n[mailboxes.b]\naddress = 'same@x.example'\n",
     "share INTROLOOP_ADDRESS"),
    ("[mailboxes.a]\naddress = 'a@x.example'\ndatabase_url = 'sqlite:///x.db'\n"
     "[mailboxes.b]\naddress = 'b@x.example'\ndatabase_url = 'sqlite:///x.db'\n",
     "share INTROLOOP_DATABASE_URL"),
    ("[mailboxes.a]\naddress = 'not an address'\n", "[mailboxes.a] INTROLOOP_ADDRESS"),
    ("[nothing]\n", "has no [mailboxes.NAME] tables"),
    ("[mailboxes.a\n", "INTROLOOP_MAILBOXES_FILE"),
])
def test_mistakes_are_one_line_naming_the_mailbox(env: pytest.MonkeyPatch, tmp_path: Path,
                                                  text: str, problem: str) -> None:
    env.setenv("INTROLOOP_MAILBOXES_FILE", str(_toml(tmp_path, text)))
    with pytest.raises(ConfigError) as err:
        load_mailboxes("/nonexistent")
    assert any(problem in line for line in err.value.problems), err.value.problems


def test_unknown_mailbox_on_the_command_line(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from service.cli import main

    env.setenv("INTROLOOP_MAILBOXES_FILE", str(_toml(
        tmp_path, "[mailboxes.berlin]\naddress = 'b@x.example'\n")))
    result = CliRunner().invoke(main, ["--env-file", "/nonexistent", "--mailbox", "rome",
                                       "members", "list"])
    assert result.exit_code == 1
    assert "error: --mailbox rome: not in" in result.output and "berlin" in result.output


# ----------------------------------------------------------------------------- real servers


def _load(name: str) -> Any:
    key = f"introloop_mailboxes_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, TESTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


@pytest.mark.servers
def test_two_chapters_two_workers(e2e: Any, pg_url: str, pg_cluster: Any,
                                  tmp_path: Path) -> None:
    W = _load("test_workers_servers")
    stack = e2e.stack
    people = W.seed_people(stack, 6)
    chapter = stack.add_user("chapter@example.test")
    second = pg_cluster.create_database(f"chapter_{int(time.time() * 1000) % 10**9}")
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "feedback_request.subject.j2").write_text("Berlin chapter: how did it go?\n")
    path = _toml(tmp_path, f"""
[mailboxes.main]
address = "referrals@example.test"
imap_user = "referrals@example.test"
network_name = "Main Network"
database_url = "{pg_url}"

[mailboxes.chapter]
address = "{chapter}"
imap_user = "{chapter}"
network_name = "Berlin Chapter"
timezone = "Europe/Berlin"
templates_dir = "{templates}"
database_url = "{second}"
""")
    env = W.worker_env(e2e, pg_url)
    for k in ("INTROLOOP_ADDRESS", "INTROLOOP_IMAP_USER", "INTROLOOP_IMAP_PASSWORD",
              "INTROLOOP_DATABASE_URL"):
        env.pop(k, None)  # nothing shared that is a mailbox's own
    env.update({"INTROLOOP_MAILBOXES_FILE": str(path),
                "INTROLOOP_MAIN_IMAP_PASSWORD": stack.password("referrals@example.test"),
                "INTROLOOP_CHAPTER_IMAP_PASSWORD": stack.password(chapter)})
    e2e.env = env
    e2e.cli("--mailbox", "main", "members", "add", "alice@example.test")
    e2e.cli("--mailbox", "chapter", "members", "add", "bob@example.test")
    e2e.intro("alice@example.test", people[0:2], "Main intro")
    _send(e2e, "bob@example.test", people[2:4], chapter, "Chapter intro")
    _send(e2e, "alice@example.test", people[4:6], chapter, "Not a chapter member")
    stack.wait_for("referrals@example.test", 1)
    stack.wait_for(chapter, 2)

    workers = W.Workers(env, tmp_path)
    workers.start(2)
    try:
        for url in (pg_url, second):
            engine = sa.create_engine(url)
            W.wait_until("a referral and its two requests",
                         lambda e=engine: W.scalar(e, "select count(*) from outbox where "
                                                   "status = 'sent'") == 2
                         and W.scalar(e, "select count(*) from inbound where status = "
                                      "'processed'") >= 1, why=workers.log)
            engine.dispose()
        W.wait_until("the chapter's rejected intro", lambda: W.scalar(
            sa.create_engine(second), "select count(*) from inbound where status = "
            "'processed'") == 2, why=workers.log)
    finally:
        codes = workers.stop()
    assert codes == [0, 0], workers.log()
    assert "Traceback" not in workers.log()

    def received(user: str) -> list[Any]:
        return [message_from_bytes(r, policy=policy.default) for r in stack.messages(user)
                if b"example.test" in r]

    for user in people[0:2]:
        (msg,) = [m for m in received(user) if "referrals@example.test" in str(m["From"])]
        assert "Main Network" in str(msg["From"]) and "How did" in str(msg["Subject"])
    for user in people[2:4]:
        (msg,) = [m for m in received(user) if chapter in str(m["From"])]
        assert "Berlin Chapter" in str(msg["From"])
        assert str(msg["Subject"]) == "Berlin chapter: how did it go?"
    for user in people[4:6]:
        assert not [m for m in received(user) if chapter in str(m["From"])]
    main_refs = json.loads(e2e.cli("--mailbox", "main", "referrals", "--json"))
    chapter_refs = json.loads(e2e.cli("--mailbox", "chapter", "referrals", "--json"))
    assert [r["referrer"]["email"] if isinstance(r["referrer"], dict) else r["referrer"]
            for r in main_refs] == ["alice@example.test"]
    assert len(chapter_refs) == 1 and "bob@example.test" in json.dumps(chapter_refs)
    # both workers served both mailboxes; each mailbox was read by one worker at a time
    taken = [json.loads(ln).get("mailbox_config") for ln in workers.log().splitlines()
             if '"mailbox_lease_taken"' in ln]
    assert sorted(set(taken)) == ["chapter", "main"]
    pg_cluster.drop_database(second.rsplit("/", 1)[1])


def _send(e2e: Any, sender: str, parties: list[str], to: str, subject: str) -> None:
    from email.message import EmailMessage
    from email.utils import make_msgid

    m = EmailMessage()
    m["From"] = sender
    m["To"] = ", ".join(parties)
    m["Subject"] = subject
    m["Message-ID"] = make_msgid(domain="example.test")
    m.set_content("You two should talk.")
    e2e.stack.send(m.as_bytes(), sender, [*parties, to])

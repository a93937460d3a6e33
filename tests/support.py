"""Helpers for end-to-end tests: drive the real CLI against the real mail stack.

Loaded by path from conftest.py (like servers.py); tests get it through the `e2e` fixture.
"""

from __future__ import annotations

import json
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from service.cli import main

SERVICE = "referrals@example.test"


class E2E:
    """An Introloop configured by environment against a MailStack, plus mail-client helpers."""

    def __init__(self, stack: Any, data_dir: Path):
        self.stack = stack
        self.env: dict[str, str] = {
            "INTROLOOP_ADDRESS": SERVICE,
            "INTROLOOP_NETWORK_NAME": "Test Network",
            "INTROLOOP_OPERATOR": "operator@example.test",
            "INTROLOOP_SECRET": "e2e-secret-0123456789abcdef",
            "INTROLOOP_IMAP_HOST": stack.host,
            "INTROLOOP_IMAP_PORT": str(stack.imap_port),
            "INTROLOOP_IMAP_TLS": "none",
            "INTROLOOP_IMAP_USER": SERVICE,
            "INTROLOOP_IMAP_PASSWORD": stack.password(SERVICE),
            "INTROLOOP_SMTP_HOST": stack.host,
            "INTROLOOP_SMTP_PORT": str(stack.smtp_port),
            "INTROLOOP_SMTP_TLS": "none",
            "INTROLOOP_DATA_DIR": str(data_dir),
            "INTROLOOP_FEEDBACK_DELAY": "0s",
            "INTROLOOP_TIMEZONE": "UTC",
            "INTROLOOP_QUIET_HOURS": "",
        }

    # ---- the operator's side: the real CLI

    def cli(self, *args: str, expect: int = 0) -> str:
        """Run `introloop ARGS` with this environment; return its output."""
        result = CliRunner().invoke(main, ["--env-file", "/nonexistent/.env", *args],
                                    env=self.env, catch_exceptions=False)
        assert result.exit_code == expect, result.output
        return result.output

    def run_once(self) -> dict[str, Any]:
        """`introloop run --once --json`, parsed."""
        return json.loads(self.cli("run", "--once", "--json").strip().splitlines()[-1])

    # ---- the people's side: a mail client

    def intro(self, sender: str, parties: list[str], subject: str = "Intro",
              cc: list[str] | None = None) -> str:
        """Send an intro from `sender` to `parties`, BCC'ing the service; returns Message-ID."""
        m = EmailMessage()
        m["From"] = sender
        m["To"] = ", ".join(parties)
        if cc:
            m["Cc"] = ", ".join(cc)
        m["Subject"] = subject
        m["Message-ID"] = make_msgid(domain="example.test")
        m.set_content("You two should talk. I'll let you take it from here.")
        rcpts = [_addr(p) for p in parties + (cc or [])] + [SERVICE]
        self.stack.send(m.as_bytes(), _addr(sender), rcpts)
        return str(m["Message-ID"])

    def from_service(self, user: str, folder: str = "INBOX") -> list[EmailMessage]:
        """Every message `user` received from the service, oldest first."""
        return [m for m in parsed(self.stack.messages(user, folder))
                if SERVICE in str(m["From"])]

    def wait_from_service(self, user: str, count: int, timeout: float = 20) -> list[EmailMessage]:
        """Wait until `user` has at least `count` messages from the service."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            got = self.from_service(user)
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def answer(self, user: str, request: EmailMessage, text: str, *, to: str | None = None,
               threaded: bool = True, sender: str | None = None, **headers: str) -> None:
        """Reply to `request` as `user` would (quoting it), optionally to another address."""
        m = EmailMessage()
        m["From"] = sender or user
        target = to or str(request["Reply-To"] or request["From"])
        m["To"] = target
        m["Subject"] = "Re: " + str(request["Subject"])
        m["Message-ID"] = make_msgid(domain="example.test")
        if threaded:
            m["In-Reply-To"] = request["Message-ID"]
            m["References"] = request["Message-ID"]
        for k, v in headers.items():
            m[k.replace("_", "-")] = v
        quoted = "\n".join("> " + line for line in text_of(request).splitlines())
        m.set_content(f"{text}\n\nOn Monday, Test Network <{SERVICE}> wrote:\n{quoted}\n")
        self.stack.send(m.as_bytes(), _addr(sender or user), [_addr(target)])


def _addr(value: str) -> str:
    return value.split("<")[-1].rstrip(">").strip()


def parsed(raws: list[bytes]) -> list[EmailMessage]:
    """Parse raw messages with the modern policy."""
    return [message_from_bytes(r, policy=policy.default) for r in raws]  # type: ignore[misc]


def text_of(msg: EmailMessage) -> str:
    """The text/plain part of a message."""
    body = msg.get_body(("plain",))
    assert body is not None
    return body.get_content()  # type: ignore[no-any-return]

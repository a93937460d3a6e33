"""The composition root: the only module that builds real adapters and wires them together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from service.adapters.db import make_engine, migrate
from service.adapters.imap import ImapMailbox, SigninReport
from service.adapters.local import FileSender, MaildirMailbox
from service.adapters.oauth import OAuthApp, StoredTokens
from service.adapters.smtp import SmtpSender
from service.adapters.templates import Renderer
from service.alerts import SigninRecorder
from service.classifier_data import load_classifier
from service.config import Settings
from service.loop import Loop
from service.ports import Mailbox, Sender


class SystemClock:
    """The real clock, in aware UTC."""

    def now(self) -> datetime:
        """Aware UTC now."""
        return datetime.now(UTC)


@dataclass
class FrozenClock:
    """A clock that moves only when told to (the demo's simulated time, and tests)."""

    current: datetime

    def now(self) -> datetime:
        """The simulated now."""
        return self.current

    def advance(self, delta: timedelta) -> None:
        """Move time forward."""
        self.current = self.current + delta


def local_paths(settings: Settings) -> tuple[Path, Path]:
    """The embedded transport's inbound Maildir and outgoing .eml directory."""
    return settings.data_dir / "maildir", settings.data_dir / "outgoing"


def build_tokens(settings: Settings, engine: Engine, clock: object | None = None
                 ) -> StoredTokens | None:
    """The OAuth sign-in of the mailbox login (None when it signs in with a password)."""
    if not (settings.uses_oauth and settings.imap_user):
        return None
    return StoredTokens(engine, OAuthApp.from_settings(settings), settings.imap_user,
                        settings.secret_bytes(), clock=clock)


def build_mailbox(settings: Settings, *, tokens: StoredTokens | None = None,
                  on_signin: SigninReport | None = None) -> Mailbox:
    """IMAP when INTROLOOP_IMAP_HOST is set, else the local Maildir."""
    if settings.uses_imap:
        assert settings.imap_host and settings.imap_user
        return ImapMailbox(
            settings.imap_host,
            settings.effective_imap_port,
            settings.imap_user,
            settings.imap_password.get_secret_value() if settings.imap_password else "",
            tls=settings.imap_tls,
            folder=settings.imap_folder,
            insecure=settings.tls_insecure,
            tokens=tokens,
            on_signin=on_signin,
        )
    return MaildirMailbox(local_paths(settings)[0])


def build_sender(settings: Settings, *, tokens: StoredTokens | None = None,
                 on_signin: SigninReport | None = None) -> Sender:
    """SMTP when INTROLOOP_SMTP_HOST is set, else .eml files under the data directory."""
    if settings.uses_smtp:
        assert settings.smtp_host
        return SmtpSender(
            settings.smtp_host,
            settings.effective_smtp_port,
            user=settings.smtp_user,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            tls=settings.smtp_tls,
            local_hostname=settings.domain,
            insecure=settings.tls_insecure,
            tokens=tokens,
            on_signin=on_signin,
        )
    return FileSender(local_paths(settings)[1])


def build_engine(settings: Settings, *, run_migrations: bool = True) -> Engine:
    """The database engine, migrated to the newest schema."""
    engine = make_engine(settings.effective_database_url)
    if run_migrations:
        migrate(engine)
    return engine


def build_loop(
    settings: Settings,
    *,
    engine: Engine | None = None,
    mailbox: Mailbox | None = None,
    sender: Sender | None = None,
    clock: object | None = None,
) -> Loop:
    """A Loop with real adapters, unless some are handed in (the demo hands in a clock)."""
    engine = engine or build_engine(settings)
    clock = clock or SystemClock()
    # one token source for IMAP and SMTP (one refresh serves both); sign-ins feed the alerts
    tokens = build_tokens(settings, engine, clock)
    signin = SigninRecorder(engine, clock)
    loop = Loop(
        settings,
        engine,
        mailbox=mailbox if mailbox is not None else build_mailbox(
            settings, tokens=tokens, on_signin=signin),
        sender=sender if sender is not None else build_sender(
            settings, tokens=tokens, on_signin=signin),
        renderer=Renderer(settings.templates_dir),
        classify=load_classifier().classify,
        clock=clock,  # type: ignore[arg-type]
    )
    if tokens is not None:
        loop.keep_signed_in = tokens.access_token
    mb = loop.mailbox
    if isinstance(mb, ImapMailbox) and isinstance(loop.sender, SmtpSender):
        loop.sent_copy = mb.append_sent
        loop.sent_check = sent_check(mb)
    loop.signer = build_signer(settings)
    return loop


def sent_check(mb: ImapMailbox) -> Callable[[str], bool | None]:
    """Is a Message-ID in the IMAP Sent folder? None when the server cannot be asked now."""

    from service.adapters.imap import MailboxError

    def check(message_id: str) -> bool | None:
        try:
            mb.connect()  # unreachable: we cannot tell (never guess "not sent")
            return mb.in_sent(message_id)
        except MailboxError:
            return None

    return check


def build_signer(settings: Settings) -> Callable[[bytes], bytes] | None:
    """A DKIM signer when INTROLOOP_DKIM_SELECTOR and _KEY_FILE are set, else None."""
    if not (settings.dkim_selector and settings.dkim_key_file):
        return None
    from service.adapters.dkim import DkimSigner

    return DkimSigner.from_file(settings.dkim_selector, settings.domain, settings.dkim_key_file)

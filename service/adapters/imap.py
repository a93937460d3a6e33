"""The IMAP mailbox (imapclient): incremental UID fetch with BODY.PEEK, IDLE as a wake-up hint.

- UIDs mean something only within one UIDVALIDITY; the loop stores both and starts over when
  UIDVALIDITY changes.
- `UID SEARCH UID n:*` always returns the highest UID even when it is below n (RFC 3501
  §6.4.8), so results at or below the watermark are dropped.
- BODY.PEEK[] does not set \\Seen: people may read the same mailbox.
- Processed messages get the keyword `$Introloop` where the server allows keywords; the
  database, not the flag, decides what has been processed.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from service.adapters.oauth import OAuthError, TokenSource
from service.ports import RawMail

# Told the outcome of every sign-in: (channel, None) when it worked, (channel, error) when not.
SigninReport = Callable[[str, str | None], None]

log = structlog.get_logger("introloop.imap")
DONE_KEYWORD = b"$Introloop"
FETCH_BATCH = 100


class MailboxError(Exception):
    """The mailbox cannot be reached or used; the message is one line naming the fix."""


def tls_context(insecure: bool = False) -> ssl.SSLContext:
    """A verifying TLS context (stdlib imaplib/smtplib default to *not* verifying)."""
    ctx = ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ImapMailbox:
    """One folder of one IMAP account."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        *,
        tls: str = "ssl",
        folder: str = "INBOX",
        name: str | None = None,
        timeout: float = 60.0,
        insecure: bool = False,
        tokens: TokenSource | None = None,
        on_signin: SigninReport | None = None,
        sasl: tuple[str, ...] = ("OAUTHBEARER", "XOAUTH2"),
    ):
        self.host, self.port, self.user = host, port, user
        self._password = password
        # OAuth: a TokenSource instead of the password; SASL mechanisms in order of preference
        self.tokens, self.sasl, self._on_signin = tokens, sasl, on_signin
        self.tls, self.folder, self.timeout = tls, folder, timeout
        self.name = name or f"{user}@{host}"
        self._insecure = insecure
        self._client: IMAPClient | None = None
        self._uidvalidity: int | None = None
        self._can_keyword = False
        self._idling = False

    # -- connection

    def connect(self) -> IMAPClient:
        """Connect, log in and select the folder (reusing a live connection)."""
        if self._client is not None:
            return self._client
        where = f"IMAP {self.host}:{self.port} ({self.tls})"
        if self._insecure:
            log.warning("tls_insecure", server=where, note="certificates are NOT checked "
                        "(INTROLOOP_TLS_INSECURE=true): for test servers only")
        try:
            client = IMAPClient(
                self.host,
                port=self.port,
                ssl=self.tls == "ssl",
                ssl_context=tls_context(self._insecure) if self.tls != "none" else None,
                timeout=self.timeout,
            )
            if self.tls == "starttls":
                client.starttls(tls_context(self._insecure))
        except (TimeoutError, OSError, ssl.SSLError, IMAPClientError) as exc:
            raise self._report_signin(
                f"cannot reach {where}: {exc}; check INTROLOOP_IMAP_HOST/_PORT/_TLS") from None
        try:
            self._login(client, where)
        except MailboxError as exc:
            _close_quietly(client)
            raise self._report_signin(str(exc)) from None
        self._report_signin(None)  # signed in
        try:
            info = client.select_folder(self.folder)
        except IMAPClientError as exc:
            _close_quietly(client)
            raise MailboxError(
                f"{where}: folder {self.folder!r} cannot be opened ({_text(exc)}); check "
                "INTROLOOP_IMAP_FOLDER"
            ) from None
        self._uidvalidity = int(info.get(b"UIDVALIDITY", 0)) or None
        perm = info.get(b"PERMANENTFLAGS", ())
        self._can_keyword = b"\\*" in perm or DONE_KEYWORD in perm
        self._client = client
        log.info("imap_connected", mailbox=self.name, folder=self.folder,
                 uidvalidity=self._uidvalidity, idle=self.has_idle())
        return client

    def _login(self, client: IMAPClient, where: str) -> None:
        """Password LOGIN, or SASL OAUTHBEARER / XOAUTH2 with a fresh access token."""
        if self.tokens is None:
            try:
                client.login(self.user, self._password)
            except LoginError as exc:
                raise MailboxError(
                    f"{where} refused the login for {self.user}: {_text(exc)}; check "
                    "INTROLOOP_IMAP_USER/_PASSWORD (Gmail and Microsoft 365 need an app password "
                    "or OAuth: INTROLOOP_PROVIDER)") from None
            return
        offered = [m for m in self.sasl if client.has_capability(f"AUTH={m}")]
        if not offered:
            raise MailboxError(f"{where} offers neither of {'/'.join(self.sasl)}: it cannot "
                               "sign in with OAuth; check INTROLOOP_IMAP_HOST")
        try:
            token = self.tokens.access_token()
            if offered[0] == "OAUTHBEARER":
                client.oauthbearer_login(self.user, token)
            else:
                client.oauth2_login(self.user, token, mech=offered[0])
        except OAuthError as exc:
            raise MailboxError(f"IMAP sign-in for {self.user}: {exc}") from None
        except LoginError as exc:
            self.tokens.invalidate()  # a stale or revoked token: the next try refreshes it
            raise MailboxError(
                f"{where} refused the OAuth token ({offered[0]}) for {self.user}: {_text(exc)};"
                " check that the app has the mail scope (Google: https://mail.google.com/, "
                "Microsoft: IMAP.AccessAsUser.All) and that this account may use IMAP") from None

    def _report_signin(self, error: str | None) -> MailboxError:
        """Tell the sign-in observer (the operator alerts) how it went; the error to raise."""
        if self._on_signin is not None:
            try:
                self._on_signin("imap", error)
            except Exception:  # the observer must never break the mailbox
                log.warning("signin_report_failed", exc_info=True)
        return MailboxError(error or "")

    def has_idle(self) -> bool:
        """True when the server offers IDLE (RFC 2177)."""
        return self._client is not None and self._client.has_capability("IDLE")

    def close(self) -> None:
        """Log out (quietly: the connection may already be gone)."""
        client, self._client = self._client, None
        if client is not None:
            if self._idling:
                try:
                    client.idle_done()
                except Exception:
                    pass
                self._idling = False
            _close_quietly(client)

    def _drop(self) -> None:
        """Forget a broken connection; the next call reconnects."""
        client, self._client, self._idling = self._client, None, False
        if client is not None:
            try:
                client.shutdown()
            except Exception:
                pass

    # -- Mailbox protocol

    def uidvalidity(self) -> int | None:
        """UIDVALIDITY of the selected folder (connects if needed)."""
        self.connect()
        return self._uidvalidity

    def fetch_new(self, after_uid: int | None) -> Iterator[RawMail]:
        """Every message with a UID above `after_uid`, oldest first, without setting \\Seen."""
        client = self.connect()
        after = after_uid or 0
        try:
            uids = sorted(u for u in client.search(["UID", f"{after + 1}:*"]) if u > after)
        except (OSError, IMAPClientError) as exc:
            self._drop()
            raise MailboxError(f"IMAP search failed on {self.name}: {_text(exc)}") from None
        for i in range(0, len(uids), FETCH_BATCH):
            batch = uids[i : i + FETCH_BATCH]
            try:
                data = client.fetch(batch, ["BODY.PEEK[]"])
            except (OSError, IMAPClientError) as exc:
                self._drop()
                raise MailboxError(f"IMAP fetch failed on {self.name}: {_text(exc)}") from None
            for uid in batch:
                item = data.get(uid) or {}
                body = item.get(b"BODY[]")
                if body is None:
                    continue  # expunged between SEARCH and FETCH
                yield RawMail(data=bytes(body), mailbox=self.name, folder=self.folder,
                              uidvalidity=self._uidvalidity, uid=uid)

    def mark_done(self, mail: RawMail) -> None:
        """Add the `$Introloop` keyword (when the server keeps keywords)."""
        if mail.uid is None or not self._can_keyword:
            return
        try:
            self.connect().add_flags([mail.uid], [DONE_KEYWORD], silent=True)
        except (OSError, IMAPClientError) as exc:
            # harmless: the database already knows the message; the flag is for people
            log.warning("imap_flag_failed", mailbox=self.name, uid=mail.uid, error=_text(exc))
            self._drop()

    def wait(self, timeout: float) -> bool:
        """IDLE until the server reports something or `timeout` passes. True when woken.

        IDLE is only a hint: the caller fetches by UID afterwards either way. An empty
        idle_check can also mean the socket died, so any error drops the connection.
        """
        try:
            client = self.connect()
            if not self.has_idle():
                return False
            # Mail that arrived since our last command (while the worker was processing) is
            # not announced during the IDLE that follows: Dovecot reports it only in its
            # answer to DONE, after the whole timeout. A NOOP first reports it at once.
            if _news(client.noop()[1]):
                return True
            client.idle()
            self._idling = True
            try:
                responses = client.idle_check(timeout=timeout)
            finally:
                self._idling = False
                done = client.idle_done()
            return bool(responses) or _news(done[1])
        except (OSError, IMAPClientError, MailboxError) as exc:
            log.warning("imap_idle_interrupted", mailbox=self.name, error=_text(exc))
            self._drop()
            return False

    # -- Sent folder (so the operator sees what went out, and a resend can be avoided)

    def sent_folder(self) -> str | None:
        """The folder flagged \\Sent (RFC 6154), if any."""
        try:
            client = self.connect()
            folder = client.find_special_folder(b"\\Sent")
            return str(folder) if folder else None
        except Exception:
            return None

    def append_sent(self, raw: bytes) -> bool:
        """APPEND a sent message to the Sent folder, marked \\Seen. False when not possible."""
        folder = self.sent_folder()
        if folder is None:
            return False
        try:
            self.connect().append(folder, raw, flags=[b"\\Seen"])
            return True
        except (OSError, IMAPClientError) as exc:
            log.warning("imap_append_failed", folder=folder, error=_text(exc))
            self._drop()
            return False

    def in_sent(self, message_id: str) -> bool:
        """True when a message with this Message-ID is in the Sent folder (False when there is
        no Sent folder). MailboxError when the server cannot be asked: "not found" must not
        be guessed, since the answer decides whether a message is sent again."""
        folder = self.sent_folder()
        if folder is None:
            return False
        client = self.connect()
        try:
            client.select_folder(folder, readonly=True)
            found = client.search(["HEADER", "Message-ID", f"<{message_id}>"])
            return bool(found)
        except (OSError, IMAPClientError) as exc:
            self._drop()
            raise MailboxError(f"IMAP search of {folder} failed on {self.name}: "
                               f"{_text(exc)}") from None
        finally:
            if self._client is not None:
                try:
                    self._client.select_folder(self.folder)
                except Exception:
                    self._drop()


def _news(responses: Any) -> bool:
    """True when untagged responses announce messages (EXISTS or RECENT)."""
    return any(isinstance(r, tuple) and len(r) > 1 and r[1] in (b"EXISTS", b"RECENT")
               for r in responses or ())


def _text(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, Exception) and text.startswith("b'"):
        text = text[2:-1]
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _close_quietly(client: Any) -> None:
    try:
        client.logout()
    except Exception:
        try:
            client.shutdown()
        except Exception:
            pass

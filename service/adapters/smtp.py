"""The SMTP sender (smtplib). 4xx and connection trouble are temporary; 5xx is permanent.

smtplib's `starttls()` and `SMTP_SSL` verify nothing unless given a context, so one is always
passed (see `imap.tls_context`).
"""

from __future__ import annotations

import smtplib
import ssl

import structlog

from service.adapters.imap import SigninReport, tls_context
from service.adapters.oauth import OAuthError, TokenSource
from service.ports import MaybeSent, PermanentFailure, ServerUnreachable, TemporaryFailure

log = structlog.get_logger("introloop.smtp")


class SmtpSender:
    """Sends over one reused SMTP connection, reconnecting when it drops."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        user: str | None = None,
        password: str | None = None,
        tls: str = "starttls",
        timeout: float = 60.0,
        insecure: bool = False,
        local_hostname: str | None = None,
        tokens: TokenSource | None = None,
        on_signin: SigninReport | None = None,
        sasl: tuple[str, ...] = ("OAUTHBEARER", "XOAUTH2"),
    ):
        self.host, self.port, self.tls = host, port, tls
        self.user, self._password, self.timeout = user, password, timeout
        # OAuth: a TokenSource instead of the password; SASL mechanisms in order of preference
        self.tokens, self.sasl, self._on_signin = tokens, sasl, on_signin
        self._insecure = insecure
        self._local_hostname = local_hostname
        self._conn: smtplib.SMTP | None = None

    def connect(self) -> smtplib.SMTP:
        """Open (or reuse) an authenticated connection; raise TemporaryFailure if unreachable."""
        if self._conn is not None:
            return self._conn
        where = f"SMTP {self.host}:{self.port} ({self.tls})"
        if self._insecure:
            log.warning("tls_insecure", server=where, note="certificates are NOT checked "
                        "(INTROLOOP_TLS_INSECURE=true): for test servers only")
        try:
            if self.tls == "ssl":
                conn: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout,
                    context=tls_context(self._insecure), local_hostname=self._local_hostname,
                )
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout,
                                    local_hostname=self._local_hostname)
                if self.tls == "starttls":
                    conn.starttls(context=tls_context(self._insecure))
            self._login(conn, where)
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentFailure(
                f"{where} refused the login for {self.user}: {exc.smtp_code} "
                f"{_decode(exc.smtp_error)}; check INTROLOOP_SMTP_USER/_PASSWORD"
            ) from None
        except (TimeoutError, OSError, ssl.SSLError, smtplib.SMTPException) as exc:
            raise ServerUnreachable(
                f"cannot reach {where}: {exc}; check INTROLOOP_SMTP_HOST/_PORT/_TLS"
            ) from None
        self._conn = conn
        return conn

    def _login(self, conn: smtplib.SMTP, where: str) -> None:
        """Password AUTH, or OAUTHBEARER / XOAUTH2 with a fresh access token; reports how it went.

        An OAuth refusal raises PermanentFailure: the login, not the message, is at fault.
        """
        if self.tokens is None and not self.user:
            return  # a relay that needs no login
        try:
            if self.tokens is None:
                conn.login(self.user or "", self._password or "")
            else:
                self._oauth_login(conn, where)
        except smtplib.SMTPAuthenticationError as exc:
            self._report_signin(f"{where} refused the login for {self.user}: {exc.smtp_code} "
                                f"{_decode(exc.smtp_error)}")
            raise
        except PermanentFailure as exc:
            self._report_signin(str(exc))
            raise
        self._report_signin(None)

    def _oauth_login(self, conn: smtplib.SMTP, where: str) -> None:
        assert self.tokens is not None
        conn.ehlo_or_helo_if_needed()
        offered = str(conn.esmtp_features.get("auth", "")).upper().split()
        mech = next((m for m in self.sasl if m in offered), None)
        if mech is None:
            raise PermanentFailure(f"{where} offers neither of {'/'.join(self.sasl)}: it cannot "
                                   "sign in with OAuth; check INTROLOOP_SMTP_HOST")
        try:
            token = self.tokens.access_token()
        except OAuthError as exc:
            raise PermanentFailure(f"SMTP sign-in for {self.user}: {exc}") from None
        try:
            conn.auth(mech, _SaslOnce(_oauth_response(mech, self.user or "", token)))
        except smtplib.SMTPAuthenticationError as exc:
            self.tokens.invalidate()  # a stale or revoked token: the next try refreshes it
            raise PermanentFailure(
                f"{where} refused the OAuth token ({mech}) for {self.user}: {exc.smtp_code} "
                f"{_decode(exc.smtp_error)}; check that the app may send mail (Google: "
                "https://mail.google.com/, Microsoft: SMTP.Send and SMTP AUTH enabled for "
                "the mailbox)") from None

    def _report_signin(self, error: str | None) -> None:
        if self._on_signin is not None:
            try:
                self._on_signin("smtp", error)
            except Exception:  # the observer must never break sending
                log.warning("signin_report_failed", exc_info=True)

    def send(self, raw: bytes, mail_from: str, rcpt_to: list[str], message_id: str) -> None:
        """Deliver `raw`; TemporaryFailure on 4xx/connection errors, PermanentFailure on 5xx.

        The envelope (MAIL, RCPT) and the content (DATA) are sent as separate steps, because
        what a broken connection means differs: before DATA nothing was handed over (retry
        freely; a reused connection the server closed while idle is reopened once at once),
        after it the server may have accepted the message (MaybeSent: look before resending).
        """
        conn = self._envelope(mail_from, rcpt_to)
        try:
            code, resp = conn.data(raw)
            if code != 250:
                # smtplib.data() returns the final answer instead of raising (sendmail checks
                # it): anything but 250 means the server did not take the message
                raise smtplib.SMTPDataError(code, resp)
        except smtplib.SMTPResponseException as exc:
            # the server answered DATA with an error: it did not take the message
            self._reset(conn)
            raise _by_code(exc.smtp_code, _decode(exc.smtp_error)) from None
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            self._conn = None
            raise MaybeSent(f"connection lost after handing over {message_id}: {exc}") from None

    def _envelope(self, mail_from: str, rcpt_to: list[str]) -> smtplib.SMTP:
        """MAIL FROM and RCPT TO on a live connection; raises like `send`."""
        for attempt in (1, 2):
            reused = self._conn is not None
            try:
                conn = self.connect()
            except PermanentFailure as exc:
                # a refused login says nothing about this message: keep it queued
                raise ServerUnreachable(str(exc)) from None
            try:
                conn.ehlo_or_helo_if_needed()
                options = []
                if not all(a.isascii() for a in (mail_from, *rcpt_to)) and \
                        conn.has_extn("smtputf8"):
                    options.append("SMTPUTF8")  # internationalised addresses (RFC 6531)
                code, resp = conn.mail(mail_from, options)
                if code != 250:
                    self._reset(conn)
                    raise _by_code(code, f"MAIL FROM refused: {_decode(resp)}")
                refused = {}
                for rcpt in rcpt_to:
                    code, resp = conn.rcpt(rcpt)
                    if code not in (250, 251):
                        refused[rcpt] = (code, resp)
                if refused:
                    self._reset(conn)
                    self._classify(refused)
                return conn
            except (OSError, smtplib.SMTPServerDisconnected) as exc:
                self._conn = None
                if reused and attempt == 1:
                    continue  # the server closed our idle connection: open a fresh one
                raise ServerUnreachable(
                    f"SMTP {self.host}:{self.port} dropped the connection: {exc}") from None
            except smtplib.SMTPResponseException as exc:
                self._reset(conn)
                raise _by_code(exc.smtp_code, _decode(exc.smtp_error)) from None
        raise AssertionError("unreachable")

    def _reset(self, conn: smtplib.SMTP) -> None:
        """RSET after a refusal so the connection can carry the next message."""
        try:
            conn.rset()
        except (OSError, smtplib.SMTPException):
            self._conn = None

    def _classify(self, refused: dict[str, tuple[int, bytes]]) -> None:
        codes = [(rcpt, code, _decode(msg)) for rcpt, (code, msg) in refused.items()]
        text = "; ".join(f"{rcpt}: {code} {msg}" for rcpt, code, msg in codes)
        if all(400 <= code < 500 for _, code, _ in codes):
            raise TemporaryFailure(text)
        raise PermanentFailure(text)

    def check(self) -> None:
        """Connect and say hello (for `introloop check`); raises like send()."""
        conn = self.connect()
        try:
            code, _ = conn.noop()
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise TemporaryFailure(f"SMTP {self.host}:{self.port} stopped answering: {exc}") \
                from None
        if code != 250:
            raise TemporaryFailure(f"SMTP {self.host}:{self.port} answered NOOP with {code}")

    def close(self) -> None:
        """QUIT (quietly)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except Exception:
                try:
                    conn.close()
                except Exception:
                    pass


def _by_code(code: int, text: str) -> TemporaryFailure | PermanentFailure:
    """4xx is worth retrying; anything else (5xx, odd codes) is the server's final answer."""
    message = f"{code} {text}"
    if 400 <= code < 500:
        return TemporaryFailure(message)
    return PermanentFailure(message)


class _SaslOnce:
    """smtplib authobject: the initial response, then an empty line to any error challenge.

    (XOAUTH2 and OAUTHBEARER servers answer a bad token with a JSON challenge that the client
    must acknowledge with an empty response before the final 535.)
    """

    def __init__(self, initial: str):
        self._initial: str | None = initial

    def __call__(self, challenge: bytes | None = None) -> str:
        initial, self._initial = self._initial, None
        return initial or ""


def _oauth_response(mech: str, user: str, token: str) -> str:
    """The SASL client response (smtplib base64-encodes it)."""
    if mech == "OAUTHBEARER":  # RFC 7628: GS2 header naming the user, then the bearer token
        authzid = user.replace("=", "=3D").replace(",", "=2C")
        return f"n,a={authzid},\x01auth=Bearer {token}\x01\x01"
    return f"user={user}\x01auth=Bearer {token}\x01\x01"  # XOAUTH2 (Google, Microsoft)


def _decode(value: bytes | str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(value.split())

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
from service.ports import PermanentFailure, TemporaryFailure

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
            raise TemporaryFailure(
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
        """Deliver `raw`; TemporaryFailure on 4xx/connection errors, PermanentFailure on 5xx."""
        conn = self.connect()
        try:
            refused = conn.sendmail(mail_from, rcpt_to, raw)
        except smtplib.SMTPRecipientsRefused as exc:
            self._classify(exc.recipients)
            return
        except smtplib.SMTPResponseException as exc:
            self.close()
            text = f"{exc.smtp_code} {_decode(exc.smtp_error)}"
            if 400 <= exc.smtp_code < 500:
                raise TemporaryFailure(text) from None
            raise PermanentFailure(text) from None
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            self._conn = None
            raise TemporaryFailure(f"connection lost while sending: {exc}") from None
        if refused:
            self._classify(refused)

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

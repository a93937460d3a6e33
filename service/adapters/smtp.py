"""The SMTP sender (smtplib). 4xx and connection trouble are temporary; 5xx is permanent.

smtplib's `starttls()` and `SMTP_SSL` verify nothing unless given a context, so one is always
passed (see `imap.tls_context`).
"""

from __future__ import annotations

import smtplib
import ssl

import structlog

from service.adapters.imap import tls_context
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
    ):
        self.host, self.port, self.tls = host, port, tls
        self.user, self._password, self.timeout = user, password, timeout
        self._insecure = insecure
        self._local_hostname = local_hostname
        self._conn: smtplib.SMTP | None = None

    def connect(self) -> smtplib.SMTP:
        """Open (or reuse) an authenticated connection; raise TemporaryFailure if unreachable."""
        if self._conn is not None:
            return self._conn
        where = f"SMTP {self.host}:{self.port} ({self.tls})"
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
            if self.user:
                conn.login(self.user, self._password or "")
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


def _decode(value: bytes | str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(value.split())

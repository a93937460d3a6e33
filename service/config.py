"""Settings: INTROLOOP_* variables from the environment, a `.env` file and `config/defaults.env`.

Precedence (highest first): real environment, the operator's `.env`, `config/defaults.env`.
pydantic-settings does the reading (it uses python-dotenv for the files) and the typing; this
module adds Introloop's own value formats (durations, quiet hours, sender lists) and turns every
problem into one line that names the variable and the fix.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.paths import config_dir

ENV_PREFIX = "INTROLOOP_"
_DURATION_PART = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EMAIL = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+\.[^@\s<>\"',;]+$")
# INTROLOOP_PROVIDER presets: what a Google or Microsoft operator would otherwise type.
# Ports and TLS come from the TLS modes, whose defaults (IMAP ssl → 993, SMTP starttls → 587)
# are what both providers want; the logins default to INTROLOOP_ADDRESS. Explicit settings win.
PROVIDER_PRESETS: dict[str, dict[str, str]] = {
    "google": {"imap_host": "imap.gmail.com", "smtp_host": "smtp.gmail.com"},
    "microsoft": {"imap_host": "outlook.office365.com", "smtp_host": "smtp.office365.com"},
}


class ConfigError(Exception):
    """A setting is missing or malformed; ``str(e)`` has one line per problem, naming it."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def parse_duration(value: str) -> timedelta:
    """Parse `3d`, `12h`, `90m`, `0s`, `1d12h` or a bare number of seconds into a timedelta."""
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+", text):
        return timedelta(seconds=int(text))
    parts = _DURATION_PART.findall(text)
    if not parts or _DURATION_PART.sub("", text).strip():
        raise ValueError(f"{value!r} is not a duration; write e.g. 3d, 12h, 30m or 0s")
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u.lower()] for n, u in parts))


def format_duration(delta: timedelta) -> str:
    """Inverse of parse_duration for display: 3d, 12h, 1d12h, 0s."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    out = []
    for unit in ("w", "d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def _split_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(str(v).strip().lower() for v in value if str(v).strip())
    return tuple(p.strip().lower() for p in re.split(r"[,\s]+", str(value)) if p.strip())


def _email(value: str, what: str) -> str:
    value = value.strip().lower()
    if not _EMAIL.match(value):
        raise ValueError(f"{value!r} is not an email address ({what})")
    return value


class Settings(BaseSettings):
    """Every setting Introloop reads. Field `x` is the variable `INTROLOOP_X`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        env_ignore_empty=False,
        frozen=True,
    )

    # identity
    address: str = Field(description="the service address members BCC")
    network_name: str
    operator: str | None = None
    secret: SecretStr | None = None

    # mailbox in
    imap_host: str | None = None
    imap_port: int | None = None
    imap_user: str | None = None
    imap_password: SecretStr | None = None
    imap_tls: Literal["ssl", "starttls", "none"]
    imap_folder: str
    # mail out
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["ssl", "starttls", "none"]
    # provider preset and sign-in (password, app password or OAuth 2.0)
    provider: Literal["google", "microsoft", "generic"] = "generic"
    auth: Literal["password", "oauth"] | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    oauth_tenant: str = "common"
    oauth_authority: str | None = None  # Microsoft: default https://login.microsoftonline.com/<tenant>
    oauth_token_url: str | None = None  # Google: default https://oauth2.googleapis.com/token
    # test servers only: skip certificate checks (logged loudly at every connect)
    tls_insecure: bool = False

    # storage
    data_dir: Path
    database_url: str | None = None
    templates_dir: Path | None = None

    # timing
    feedback_delay: timedelta
    reminder_delay: timedelta
    max_reminders: int = Field(ge=0)
    pending_recheck: timedelta
    timezone: str
    quiet_hours: Annotated[tuple[time, time] | None, NoDecode] = None
    quiet_weekends: bool = False
    party_weekly_cap: int = Field(default=3, ge=0)
    summary_hour: int = Field(ge=0, le=23)
    summary_empty: Literal["skip", "send"] = "skip"
    poll_interval: timedelta
    # operator alerts: the mailbox has had no mail for this long (0s: never alert)
    silence_alert: timedelta = timedelta(days=7)

    # several workers (PostgreSQL): how long a worker's claim on inbound messages and outbox
    # rows, and its hold on reading the mailbox, last without renewal before others take over
    claim_lease: timedelta = timedelta(minutes=5)
    mailbox_lease: timedelta = timedelta(seconds=90)
    # hostile input: bigger messages are kept in quarantine unparsed; more intros/replies than
    # this from one sender in an hour are quarantined (0: no limit)
    max_message_bytes: int = Field(default=25_000_000, ge=1024)
    sender_hourly_limit: int = Field(default=30, ge=0)

    # who reads the replies nobody could classify with confidence: operator or referrer
    unclear_to: Literal["operator", "referrer"]

    # who may create referrals (besides members)
    allow_senders: Annotated[tuple[str, ...], NoDecode] = ()
    # sender authentication of intros (service/core/auth.py): Authentication-Results stamped
    # by these authserv-ids count (any other is ignored: it may be forged); direct DKIM
    # verification needs DNS, so it is off unless asked for
    trusted_authserv_id: Annotated[tuple[str, ...], NoDecode] = ()
    verify_dkim: bool = False
    # tell the referrer "Got it: tracking your intro of …" (reply "cancel" to undo)
    confirm_intros: bool = False

    # DKIM signing of outgoing mail (optional; both or neither)
    dkim_selector: str | None = None
    dkim_key_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _provider_preset(cls, data: Any) -> Any:
        """INTROLOOP_PROVIDER=google|microsoft fills in hosts and logins left empty."""
        if not isinstance(data, dict):
            return data
        preset = PROVIDER_PRESETS.get(str(data.get("provider") or "").strip().lower())
        if preset is None:
            return data
        address = str(data.get("address") or "").strip().lower()
        fill = {**preset, "imap_user": address, "smtp_user": address,
                # one account signs in to both: an app password typed once serves SMTP too
                "smtp_password": data.get("imap_password")}
        data = dict(data)
        for key, value in fill.items():
            if data.get(key) in (None, "") and value not in (None, ""):
                data[key] = value
        return data

    @field_validator("provider", "auth", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return None if v in (None, "") else str(v).strip().lower()

    @field_validator("oauth_client_id", "oauth_authority", "oauth_token_url", mode="before")
    @classmethod
    def _empty_text(cls, v: Any) -> Any:
        return None if v in (None, "") else str(v).strip()

    @field_validator("oauth_client_secret", mode="before")
    @classmethod
    def _empty_secret(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, v: Any) -> str:
        return _email(str(v or ""), "the service address")

    @field_validator("operator", mode="before")
    @classmethod
    def _operator(cls, v: Any) -> str | None:
        return _email(str(v), "the operator's address") if v not in (None, "") else None

    @field_validator("secret", mode="before")
    @classmethod
    def _secret(cls, v: Any) -> Any:
        if v in (None, ""):
            return None
        if len(str(v)) < 16:
            raise ValueError("is too short; use at least 16 random characters")
        return v

    @field_validator(
        "imap_host", "imap_user", "smtp_host", "smtp_user", "database_url", mode="before"
    )
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("imap_port", "smtp_port", "templates_dir", "dkim_selector",
                     "dkim_key_file", mode="before")
    @classmethod
    def _empty_port(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("imap_password", "smtp_password", mode="before")
    @classmethod
    def _empty_password(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator(
        "feedback_delay", "reminder_delay", "pending_recheck", "poll_interval", "silence_alert",
        mode="before",
    )
    @classmethod
    def _duration(cls, v: Any) -> timedelta:
        if isinstance(v, timedelta):
            return v
        return parse_duration(str(v))

    @field_validator("claim_lease", "mailbox_lease", mode="before")
    @classmethod
    def _lease(cls, v: Any) -> timedelta:
        value = v if isinstance(v, timedelta) else parse_duration(str(v))
        if value < timedelta(seconds=1):
            raise ValueError("is too short; write e.g. 90s or 5m")
        return value

    @field_validator("max_message_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)b?\s*", str(v), re.IGNORECASE)
        if not m:
            raise ValueError(f"{v!r} is not a size; write e.g. 25MB, 500KB or 1000000")
        return int(m.group(1)) * {"": 1, "k": 1000, "m": 10**6, "g": 10**9}[m.group(2).lower()]

    @field_validator("timezone", mode="before")
    @classmethod
    def _tz(cls, v: Any) -> str:
        try:
            ZoneInfo(str(v))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA timezone (e.g. Europe/Berlin, UTC)") from None
        return str(v)

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _quiet(cls, v: Any) -> tuple[time, time] | None:
        if v in (None, "") or isinstance(v, tuple):
            return v or None
        m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", str(v))
        if not m:
            raise ValueError(f"{v!r} is not a range of hours; write e.g. 20:00-08:00")
        h1, m1, h2, m2 = (int(x) for x in m.groups())
        try:
            return time(h1, m1), time(h2, m2)
        except ValueError:
            raise ValueError(f"{v!r} has an impossible time") from None

    @field_validator("trusted_authserv_id", mode="before")
    @classmethod
    def _authserv_ids(cls, v: Any) -> tuple[str, ...]:
        items = _split_list(v)
        for item in items:
            if not re.fullmatch(r"[a-z0-9._-]+", item):
                raise ValueError(f"{item!r} is not a server name such as mx.google.com (the "
                                 "first word of the Authentication-Results your server adds)")
        return items

    @field_validator("allow_senders", mode="before")
    @classmethod
    def _senders(cls, v: Any) -> tuple[str, ...]:
        items = _split_list(v)
        for item in items:
            if item != "*" and not (item.startswith("@") and "." in item) and "@" not in item:
                raise ValueError(f"{item!r} is neither an address, an @domain nor *")
        return items

    # --- derived values -------------------------------------------------------------

    @property
    def zone(self) -> ZoneInfo:
        """The network's timezone as a ZoneInfo."""
        return ZoneInfo(self.timezone)

    @property
    def domain(self) -> str:
        """Domain of the service address: our Message-IDs use it."""
        return self.address.rsplit("@", 1)[1]

    @property
    def uses_imap(self) -> bool:
        """True when a real IMAP server is configured; else the local Maildir transport."""
        return bool(self.imap_host)

    @property
    def uses_smtp(self) -> bool:
        """True when a real SMTP server is configured; else outgoing mail is written as .eml."""
        return bool(self.smtp_host)

    @property
    def uses_oauth(self) -> bool:
        """True when IMAP and SMTP sign in with OAuth 2.0.

        INTROLOOP_AUTH decides when set; otherwise Google and Microsoft use OAuth unless an
        (app) password is given, and every other provider uses its password.
        """
        if self.auth is not None:
            return self.auth == "oauth"
        return self.provider in PROVIDER_PRESETS and self.imap_password is None

    @property
    def effective_database_url(self) -> str:
        """INTROLOOP_DATABASE_URL, or a SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'introloop.db').resolve()}"

    @property
    def effective_imap_port(self) -> int:
        """The IMAP port, defaulting by TLS mode."""
        return self.imap_port or (993 if self.imap_tls == "ssl" else 143)

    @property
    def effective_smtp_port(self) -> int:
        """The SMTP port, defaulting by TLS mode."""
        return self.smtp_port or {"ssl": 465, "starttls": 587, "none": 25}[self.smtp_tls]

    def secret_bytes(self) -> bytes:
        """The token-signing secret; raises ConfigError when it is not set."""
        if self.secret is None:
            raise ConfigError([_missing_secret()])
        return self.secret.get_secret_value().encode()


def _missing_secret() -> str:
    return (
        "INTROLOOP_SECRET is not set: it signs reply tokens. Put a random value in .env, e.g. "
        "the output of: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
    )


def load_settings(
    env_file: Path | str | None = ".env",
    overrides: dict[str, Any] | None = None,
    *,
    defaults_file: Path | None = None,
) -> Settings:
    """Read the settings; raise ConfigError (one line per problem) when something is wrong.

    ``overrides`` (field name → value) win over everything; the demo and the tests use them.
    """
    files: list[Path] = [defaults_file or config_dir() / "defaults.env"]
    if env_file is not None and Path(env_file).is_file():
        files.append(Path(env_file))
    try:
        return Settings(_env_file=tuple(files), **(overrides or {}))  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError([_one_line(err) for err in exc.errors()]) from None


def _one_line(err: Any) -> str:
    field = str(err["loc"][0]) if err.get("loc") else "?"
    var = ENV_PREFIX + field.upper()
    if err["type"] == "missing":
        hint = {
            "address": "set it to the mailbox members BCC, e.g. referrals@your-network.example",
        }.get(field, "set it in .env (see .env.example)")
        return f"{var} is not set: {hint}"
    msg = str(err.get("msg", "is invalid"))
    msg = msg.removeprefix("Value error, ")
    return f"{var} {msg}" if msg.startswith(("is ", "has ")) else f"{var}: {msg}"


def require_for_run(settings: Settings) -> None:
    """Checks that only matter when the service really runs (not for `inspect`)."""
    problems: list[str] = []
    if settings.secret is None:
        problems.append(_missing_secret())
    if settings.uses_imap and not settings.imap_user:
        problems.append("INTROLOOP_IMAP_USER is not set: the login of the service mailbox")
    if settings.uses_oauth:
        problems += _oauth_problems(settings)
    else:
        if settings.uses_imap and settings.imap_password is None:
            problems.append("INTROLOOP_IMAP_PASSWORD is not set: the service mailbox's password "
                            "(or an app password)")
        if settings.uses_smtp and settings.smtp_user and settings.smtp_password is None:
            problems.append("INTROLOOP_SMTP_PASSWORD is not set while INTROLOOP_SMTP_USER is")
    if bool(settings.dkim_selector) != bool(settings.dkim_key_file):
        problems.append("INTROLOOP_DKIM_SELECTOR and INTROLOOP_DKIM_KEY_FILE go together: set "
                        "both to sign outgoing mail, or neither")
    elif settings.dkim_selector and not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*",
                                                    settings.dkim_selector):
        problems.append(f"INTROLOOP_DKIM_SELECTOR {settings.dkim_selector!r} is not a DNS "
                        "label (e.g. introloop2026)")
    if settings.dkim_key_file and not Path(settings.dkim_key_file).is_file():
        problems.append(f"INTROLOOP_DKIM_KEY_FILE {settings.dkim_key_file} does not exist; "
                        "point it at the PEM private key whose public half is in DNS")
    if problems:
        raise ConfigError(problems)


def _oauth_problems(settings: Settings) -> list[str]:
    """What OAuth sign-in needs that is missing (see README "Gmail and Microsoft 365")."""
    if settings.provider not in PROVIDER_PRESETS:
        return ["INTROLOOP_AUTH=oauth needs INTROLOOP_PROVIDER=google or microsoft (their token "
                "services sign Introloop in); other providers use INTROLOOP_IMAP_PASSWORD"]
    problems = []
    if not settings.oauth_client_id:
        problems.append(f"INTROLOOP_OAUTH_CLIENT_ID is not set: the client ID of the app you "
                        f"registered with {settings.provider.title()} for Introloop (README: "
                        "Gmail and Microsoft 365)")
    if settings.provider == "google" and settings.oauth_client_secret is None:
        problems.append("INTROLOOP_OAUTH_CLIENT_SECRET is not set: Google's desktop-app client "
                        "secret, next to the client ID in the Google Cloud console")
    if settings.uses_smtp and settings.smtp_user and settings.smtp_user != settings.imap_user:
        problems.append("INTROLOOP_SMTP_USER differs from INTROLOOP_IMAP_USER: one OAuth sign-in "
                        "serves both, so leave INTROLOOP_SMTP_USER empty or make them equal")
    return problems

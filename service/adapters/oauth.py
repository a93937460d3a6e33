"""OAuth 2.0 sign-in for the service mailbox: Google (google-auth) and Microsoft 365 (msal).

IMAP and SMTP see one small interface, `TokenSource.access_token()`: "a fresh access token for
this login". Everything else lives here:

- The provider libraries do all token work: google-auth / google-auth-oauthlib (installed-app
  flow with PKCE, refresh) and msal (device-code flow, refresh through its token cache). No
  token request is written by hand.
- What they serialise (refresh token included) is kept in the database, table `oauth_token`,
  encrypted with a key derived from INTROLOOP_SECRET (Fernet, from `cryptography`). The
  database rather than a file: several workers on one PostgreSQL must all see a rotated refresh
  token at once, the Docker image keeps its state there already, and the alerts read the
  expiry and failure columns next to it. A database dump alone does not give mailbox access.
- Access tokens are refreshed `EARLY` before they expire, under a row lock so two workers do not
  refresh at once; the row is rewritten after every refresh, so a rotated refresh token is
  never lost (Zammad's 90-day outage came from not doing that).
- A failed refresh is recorded on the row (`failing_since`, `last_error`) for the operator
  alerts, and raised as `OAuthError`, one line naming the fix.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import structlog
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, select

from service.adapters.tables import OAuthToken, as_utc

log = structlog.get_logger("introloop.oauth")

GOOGLE, MICROSOFT = "google", "microsoft"
# Gmail's IMAP/SMTP scope, plus the OpenID scopes that tell us *who* signed in (a consent given
# with the wrong Google account is the classic cause of a bare "AUTHENTICATE failed").
GOOGLE_SCOPES = ("https://mail.google.com/", "openid",
                 "https://www.googleapis.com/auth/userinfo.email")
GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
# Delegated Exchange Online scopes; msal adds offline_access (a refresh token) by itself.
MICROSOFT_SCOPES = ("https://outlook.office.com/IMAP.AccessAsUser.All",
                    "https://outlook.office.com/SMTP.Send")
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com/{tenant}"
EARLY = timedelta(minutes=5)  # refresh an access token this long before it expires
MICROSOFT_IDLE_LIMIT = timedelta(days=90)  # a Microsoft refresh token unused this long dies
GOOGLE_TESTING_LIFETIME = timedelta(days=7)  # ... and one from a Google app left in "Testing"
HTTP_TIMEOUT = 30.0


class OAuthError(Exception):
    """Signing in with OAuth failed; the message is one line naming the problem and the fix."""


class TokenSource(Protocol):
    """What IMAP and SMTP need from OAuth: a fresh access token for one login."""

    account: str

    def access_token(self) -> str:
        """A valid access token (refreshed first when it is about to expire); OAuthError if not."""
        ...

    def invalidate(self) -> None:
        """The server refused the last token: fetch a new one next time."""
        ...


@dataclass(frozen=True, slots=True)
class OAuthApp:
    """The app the operator registered with the provider, and where its token service is."""

    provider: str  # google | microsoft
    client_id: str
    client_secret: str | None = None  # Google desktop apps have one (it is not secret)
    tenant: str = "common"
    authority: str | None = None  # Microsoft: default https://login.microsoftonline.com/<tenant>
    token_url: str | None = None  # Google: default https://oauth2.googleapis.com/token
    auth_url: str | None = None  # Google: default https://accounts.google.com/o/oauth2/auth

    @classmethod
    def from_settings(cls, settings: Any) -> OAuthApp:
        """The app described by INTROLOOP_PROVIDER and INTROLOOP_OAUTH_*."""
        if settings.provider not in (GOOGLE, MICROSOFT):
            raise OAuthError("OAuth sign-in needs INTROLOOP_PROVIDER=google or microsoft")
        if not settings.oauth_client_id:
            raise OAuthError("INTROLOOP_OAUTH_CLIENT_ID is not set: the client ID of the app "
                             f"registered with {settings.provider.title()} for Introloop")
        secret = settings.oauth_client_secret
        return cls(
            provider=settings.provider,
            client_id=settings.oauth_client_id,
            client_secret=secret.get_secret_value() if secret is not None else None,
            tenant=settings.oauth_tenant,
            authority=settings.oauth_authority,
            token_url=settings.oauth_token_url,
        )

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes asked for at sign-in."""
        return GOOGLE_SCOPES if self.provider == GOOGLE else MICROSOFT_SCOPES

    @property
    def name(self) -> str:
        """Google or Microsoft, for messages."""
        return "Google" if self.provider == GOOGLE else "Microsoft"

    @property
    def microsoft_authority(self) -> str:
        """The Entra ID authority URL (tenant included)."""
        return self.authority or MICROSOFT_AUTHORITY.format(tenant=self.tenant)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a sign-in or a refresh produced."""

    state: dict[str, Any]  # the library's serialised state (refresh token inside)
    access_token: str
    access_expires_at: datetime
    identity: str | None = None  # who signed in, when the provider says
    rotated: bool = False  # the provider handed out a new refresh token
    refresh_expires_at: datetime | None = None  # None: unchanged / unknown
    expiry_reason: str = ""


class Cipher:
    """Encrypts the stored token state with a key derived from INTROLOOP_SECRET."""

    def __init__(self, secret: bytes):
        key = HKDF(algorithm=SHA256(), length=32, salt=None,
                   info=b"introloop oauth token store v1").derive(secret)
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, state: dict[str, Any]) -> bytes:
        """Encrypt a JSON-able dict."""
        return self._fernet.encrypt(json.dumps(state).encode())

    def open(self, blob: bytes, account: str, provider: str) -> dict[str, Any]:
        """Decrypt what `seal` made; OAuthError when the secret changed since."""
        try:
            return dict(json.loads(self._fernet.decrypt(blob)))
        except (InvalidToken, ValueError):
            raise OAuthError(
                f"the stored sign-in for {account} cannot be read with this INTROLOOP_SECRET "
                f"(was it changed?); run `introloop auth {provider}` again"
            ) from None


# ------------------------------------------------------------------------------ providers


class GoogleTokens:
    """Google: refresh with google-auth; sign in with google-auth-oauthlib's installed-app flow."""

    def __init__(self, app: OAuthApp):
        self.app = app

    def _credentials(self, state: dict[str, Any]) -> Any:
        from google.oauth2.credentials import Credentials

        # client id/secret and endpoint come from the settings, so rotating them needs no re-auth
        return Credentials(
            token=state.get("token"),
            refresh_token=state.get("refresh_token"),
            token_uri=self.app.token_url or GOOGLE_TOKEN_URI,
            client_id=self.app.client_id,
            client_secret=self.app.client_secret,
        )

    def refresh(self, state: dict[str, Any], now: datetime) -> Grant:
        """Use the refresh token once; keeps a rotated one."""
        from google.auth.exceptions import RefreshError, TransportError
        from google.auth.transport.requests import Request

        creds = self._credentials(state)
        try:
            creds.refresh(Request())
        except RefreshError as exc:
            raise OAuthError(_google_refusal(exc)) from None
        except TransportError as exc:
            raise OAuthError(f"cannot reach Google's token service: {_first_line(exc)}; check "
                             "the network (the stored sign-in is kept)") from None
        rotated = bool(creds.refresh_token) and creds.refresh_token != state.get("refresh_token")
        return Grant(
            state={"refresh_token": creds.refresh_token, "token": creds.token},
            access_token=str(creds.token),
            access_expires_at=_expiry(creds.expiry, now),
            rotated=rotated,
        )

    def sign_in(self, *, login_hint: str | None, say: Callable[[str], None],
                ask: Callable[[str], str] | None, open_browser: bool, port: int,
                testing_app: bool, now: datetime) -> Grant:
        """The installed-app flow: a browser consent, redirected to a local port.

        With `ask` (no browser on this machine) the operator opens the printed address
        elsewhere and pastes back the `http://localhost…` address the browser ended on
        (Google retired the copy-the-code flow, and its device flow cannot grant Gmail).
        """
        from google_auth_oauthlib.flow import InstalledAppFlow

        config = {"installed": {
            "client_id": self.app.client_id,
            "client_secret": self.app.client_secret,
            "auth_uri": self.app.auth_url or GOOGLE_AUTH_URI,
            "token_uri": self.app.token_url or GOOGLE_TOKEN_URI,
            "redirect_uris": ["http://localhost"],
        }}
        flow = InstalledAppFlow.from_client_config(config, scopes=list(GOOGLE_SCOPES))
        # prompt=consent: Google hands out a refresh token only on a fresh consent
        extra: dict[str, Any] = {"prompt": "consent", "access_type": "offline"}
        if login_hint:
            extra["login_hint"] = login_hint
        try:
            if ask is not None:
                flow.redirect_uri = f"http://localhost:{port or 8765}/"
                url, state = flow.authorization_url(**extra)
                say(f"Open this address in a browser and allow access:\n\n  {url}\n\n"
                    "The browser then fails to load a http://localhost address: that is "
                    "expected. Copy that whole address from its address bar.")
                flow.fetch_token(code=_code_from(ask("Paste it here"), state),
                                 timeout=HTTP_TIMEOUT)
            else:
                flow.run_local_server(
                    host="localhost", port=port, open_browser=open_browser,
                    authorization_prompt_message="Open this address to sign in:\n\n  {url}\n",
                    success_message="Introloop is signed in. You can close this window.",
                    timeout_seconds=600, **extra)
        except OAuthError:
            raise
        except Exception as exc:  # oauthlib / requests / wsgiref: all mean "no sign-in"
            raise OAuthError(f"Google sign-in failed: {_first_line(exc)}") from None
        creds = flow.credentials
        if not creds.refresh_token:
            raise OAuthError("Google gave no refresh token; remove Introloop's access at "
                             "https://myaccount.google.com/permissions and run this again")
        token = flow.oauth2session.token or {}
        expires_at, reason = None, ""
        if token.get("refresh_token_expires_in"):
            expires_at = now + timedelta(seconds=int(token["refresh_token_expires_in"]))
            reason = "Google limits this sign-in's lifetime"
        elif testing_app:
            expires_at = now + GOOGLE_TESTING_LIFETIME
            reason = ("Google apps in Testing get refresh tokens that last 7 days: publish the "
                      "app (OAuth consent screen) to stop this")
        return Grant(
            state={"refresh_token": creds.refresh_token, "token": creds.token},
            access_token=str(creds.token),
            access_expires_at=_expiry(creds.expiry, now),
            identity=_google_identity(creds.id_token),
            refresh_expires_at=expires_at,
            expiry_reason=reason,
        )


class MicrosoftTokens:
    """Microsoft: msal with a serialisable token cache; device-code flow to sign in."""

    def __init__(self, app: OAuthApp):
        self.app = app
        self._client: Any = None
        self._cache: Any = None

    def _msal(self) -> Any:
        import msal

        if self._client is None:
            self._cache = msal.SerializableTokenCache()
            authority = self.app.microsoft_authority
            known = urlsplit(authority).hostname in _MICROSOFT_HOSTS
            try:
                self._client = msal.PublicClientApplication(
                    self.app.client_id, authority=authority, token_cache=self._cache,
                    timeout=HTTP_TIMEOUT,
                    # instance discovery asks login.microsoftonline.com about *other* hosts
                    # (sovereign clouds, test servers); their own metadata is enough
                    instance_discovery=None if known else False,
                )
            except ValueError as exc:
                raise OAuthError(f"Microsoft authority {authority} is not usable: "
                                 f"{_first_line(exc)}; check INTROLOOP_OAUTH_TENANT") from None
            except Exception as exc:
                raise OAuthError(f"cannot reach Microsoft's sign-in service ({authority}): "
                                 f"{_first_line(exc)}; check the network") from None
        return self._client

    def refresh(self, state: dict[str, Any], now: datetime) -> Grant:
        """Use the refresh token once (msal rotates it in its cache); keep the new cache."""
        client = self._msal()
        self._cache.deserialize(state.get("cache") or "{}")  # another worker may have rotated
        old_rt = _refresh_tokens(self._cache)
        accounts = [a for a in client.get_accounts()
                    if a.get("home_account_id") == state.get("home_account_id")]
        if not accounts:
            raise OAuthError("the stored Microsoft sign-in has no account in it; run "
                             "`introloop auth microsoft` again")
        try:
            result = client.acquire_token_silent_with_error(
                list(MICROSOFT_SCOPES), accounts[0], force_refresh=True)
        except Exception as exc:  # requests errors: msal does not wrap them
            raise OAuthError(f"cannot reach Microsoft's token service: {_first_line(exc)}; "
                             "check the network (the stored sign-in is kept)") from None
        if not result or "access_token" not in result:
            raise OAuthError(_microsoft_refusal(result or {}, "refresh the sign-in"))
        return self._grant(result, state["home_account_id"], now,
                           rotated=_refresh_tokens(self._cache) != old_rt)

    def sign_in(self, *, login_hint: str | None, say: Callable[[str], None],
                ask: Callable[[str], str] | None = None, open_browser: bool = False,
                port: int = 0, testing_app: bool = False, now: datetime) -> Grant:
        """The device-code flow: the operator enters a short code at Microsoft's page."""
        client = self._msal()
        self._cache.deserialize("{}")
        try:
            flow = client.initiate_device_flow(scopes=list(MICROSOFT_SCOPES))
            if "user_code" not in flow:
                raise OAuthError(_microsoft_refusal(flow, "start the device sign-in"))
            say(flow["message"])
            result = client.acquire_token_by_device_flow(flow)
        except OAuthError:
            raise
        except Exception as exc:
            raise OAuthError(f"Microsoft sign-in failed: {_first_line(exc)}") from None
        if "access_token" not in result:
            raise OAuthError(_microsoft_refusal(result, "sign in"))
        claims = result.get("id_token_claims") or {}
        identity = claims.get("preferred_username") or claims.get("email")
        accounts = client.get_accounts()
        home = next((a["home_account_id"] for a in accounts
                     if identity and a.get("username", "").lower() == identity.lower()),
                    accounts[0]["home_account_id"] if accounts else None)
        if home is None:
            raise OAuthError("Microsoft returned no account with the token; check that the "
                             "app registration allows public client flows")
        grant = self._grant(result, home, now, rotated=False)
        return Grant(**{**_fields(grant), "identity": identity})

    def _grant(self, result: dict[str, Any], home: str, now: datetime, *,
               rotated: bool) -> Grant:
        return Grant(
            state={"cache": self._cache.serialize(), "home_account_id": home},
            access_token=result["access_token"],
            access_expires_at=now + timedelta(seconds=int(result.get("expires_in", 3600))),
            rotated=rotated,
            # each use of a Microsoft refresh token restarts its 90-day inactivity window
            refresh_expires_at=now + MICROSOFT_IDLE_LIMIT,
            expiry_reason="a Microsoft sign-in unused for 90 days expires",
        )


_MICROSOFT_HOSTS = frozenset({
    "login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn", "login.microsoft.com", "login.windows.net",
})


def provider_tokens(app: OAuthApp) -> GoogleTokens | MicrosoftTokens:
    """The provider-library wrapper for `app`."""
    return GoogleTokens(app) if app.provider == GOOGLE else MicrosoftTokens(app)


# ------------------------------------------------------------------------------ the store


class StoredTokens:
    """TokenSource backed by the `oauth_token` row of one login."""

    def __init__(self, engine: Engine, app: OAuthApp, account: str, secret: bytes, *,
                 clock: Any = None):
        self.engine = engine
        self.app = app
        self.account = account.lower()
        self._cipher = Cipher(secret)
        self._provider = provider_tokens(app)
        self._clock = clock
        self._cached: tuple[str, datetime] | None = None

    def _now(self) -> datetime:
        return self._clock.now() if self._clock is not None else datetime.now(UTC)

    def invalidate(self) -> None:
        """Forget the access token in memory and in the row, so the next call refreshes."""
        self._cached = None
        with Session(self.engine) as s, s.begin():
            row = s.get(OAuthToken, self.account)
            if row is not None:
                row.access_expires_at = None

    def access_token(self) -> str:
        """A token valid for at least `EARLY`; refreshes (and saves the rotation) when needed."""
        now = self._now()
        if self._cached is not None and self._cached[1] - now > EARLY:
            return self._cached[0]
        failure: OAuthError | None = None
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            # FOR UPDATE (PostgreSQL): a second worker waits here and then reuses our token
            row = s.exec(select(OAuthToken).where(OAuthToken.account == self.account)
                         .with_for_update()).first()
            if row is None:
                raise OAuthError(f"no {self.app.name} sign-in is stored for {self.account}: "
                                 f"run `introloop auth {self.app.provider}`")
            if row.provider != self.app.provider:
                raise OAuthError(f"the stored sign-in for {self.account} is {row.provider}'s, "
                                 f"but INTROLOOP_PROVIDER is {self.app.provider}: run "
                                 f"`introloop auth {self.app.provider}`")
            state = self._cipher.open(row.state, self.account, row.provider)
            valid_until = as_utc(row.access_expires_at)
            if valid_until is not None and valid_until - now > EARLY and state.get("token"):
                self._cached = (state["token"], valid_until)
                return str(state["token"])
            try:
                grant = self._provider.refresh(state, now)
            except OAuthError as exc:
                # kept (committed) for the operator alerts, then raised
                failure = exc
                row.failing_since = as_utc(row.failing_since) or now
                row.last_error = str(exc)[:500]
                row.updated_at = now
            else:
                self._save(row, grant, now)
        if failure is not None:
            log.warning("oauth_refresh_failed", account=self.account, error=str(failure))
            raise failure
        return grant.access_token

    def _save(self, row: OAuthToken, grant: Grant, now: datetime) -> None:
        state = dict(grant.state)
        state.setdefault("token", grant.access_token)
        row.state = self._cipher.seal(state)
        row.refreshed_at, row.access_expires_at = now, grant.access_expires_at
        if grant.refresh_expires_at is not None:
            row.refresh_expires_at, row.expiry_reason = grant.refresh_expires_at, \
                grant.expiry_reason
        row.failing_since, row.last_error, row.updated_at = None, None, now
        self._cached = (grant.access_token, grant.access_expires_at)
        log.info("oauth_refreshed", account=self.account, provider=row.provider,
                 rotated=grant.rotated, expires_at=grant.access_expires_at.isoformat())


def store_sign_in(engine: Engine, secret: bytes, app: OAuthApp, account: str, grant: Grant,
                  now: datetime) -> None:
    """Save a new sign-in for `account`, replacing any earlier one."""
    state = dict(grant.state)
    state.setdefault("token", grant.access_token)
    with Session(engine) as s, s.begin():
        row = s.get(OAuthToken, account.lower())
        if row is None:
            row = OAuthToken(account=account.lower(), provider=app.provider,
                             client_id=app.client_id, state=b"", signed_in_at=now)
            s.add(row)
        row.provider, row.client_id, row.scopes = app.provider, app.client_id, " ".join(app.scopes)
        row.state = Cipher(secret).seal(state)
        row.signed_in_at, row.refreshed_at = now, now
        row.access_expires_at = grant.access_expires_at
        row.refresh_expires_at, row.expiry_reason = grant.refresh_expires_at, grant.expiry_reason
        row.failing_since, row.last_error, row.updated_at = None, None, now


def stored_sign_in(engine: Engine, account: str) -> OAuthToken | None:
    """The plain (unencrypted) columns of a login's sign-in, for `check` and the alerts."""
    with Session(engine, expire_on_commit=False) as s:
        row = s.get(OAuthToken, account.lower())
        if row is not None:
            s.expunge(row)
        return row


# ------------------------------------------------------------------------------ helpers


def _code_from(pasted: str, state: str) -> str:
    """The authorization code in the address the browser was redirected to."""
    params = parse_qs(urlsplit(pasted.strip()).query)
    if params.get("error"):
        raise OAuthError(f"Google refused: {params['error'][0]}")
    if params.get("state", [""])[0] != state:
        raise OAuthError("that address belongs to another sign-in attempt; run the command "
                         "again and paste the address from this attempt")
    if not params.get("code"):
        raise OAuthError("that address has no code= in it; copy the whole address the "
                         "browser ended on")
    return params["code"][0]


def _google_identity(id_token: str | None) -> str | None:
    """The e-mail in the OpenID token (straight from Google's token endpoint over TLS)."""
    if not id_token:
        return None
    from google.auth import jwt

    try:
        claims = jwt.decode(id_token, verify=False)
    except Exception:
        return None
    email = claims.get("email")
    return str(email) if email else None


def _google_refusal(exc: Exception) -> str:
    detail = _first_line(exc.args[0] if exc.args else exc)
    hint = "run `introloop auth google` again"
    if "invalid_grant" in detail:
        hint += (" (Google revokes sign-ins after a password change, when access is removed, "
                 "after 6 months unused, and after 7 days for apps still in Testing)")
    return f"Google refused to refresh the sign-in: {detail}; {hint}"


def _microsoft_refusal(result: dict[str, Any], what: str) -> str:
    code = result.get("error") or "no token"
    detail = _first_line(result.get("error_description") or "")
    hint = "run `introloop auth microsoft` again"
    if code == "invalid_client" or "AADSTS7000218" in detail:
        hint = ("in the app registration, allow public client flows (Authentication → "
                "Advanced settings)")
    elif "AADSTS65001" in detail or code == "consent_required":
        hint = "an administrator must grant the app IMAP.AccessAsUser.All and SMTP.Send"
    return f"Microsoft would not {what}: {code}: {detail}; {hint}".replace(": ;", ";")


def _refresh_tokens(cache: Any) -> list[str]:
    return sorted(str(rt.get("secret")) for rt in cache.search(cache.CredentialType.REFRESH_TOKEN))


def _expiry(moment: datetime | None, now: datetime) -> datetime:
    """google-auth's expiry (naive UTC, from the real clock) as a lifetime from our `now`."""
    if moment is None:
        return now + timedelta(minutes=55)
    lifetime = moment.replace(tzinfo=UTC) - datetime.now(UTC)
    return now + lifetime


def _fields(grant: Grant) -> dict[str, Any]:
    return {name: getattr(grant, name) for name in Grant.__dataclass_fields__}


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0][:300] if text else type(value).__name__


# ------------------------------------------------------------------------------ `introloop auth`


def sign_in_plan(settings: Any) -> dict[str, Any]:
    """What `introloop auth` would do, for --dry-run (contacts nobody)."""
    app = OAuthApp.from_settings(settings)
    endpoint = app.microsoft_authority if app.provider == MICROSOFT \
        else app.token_url or GOOGLE_TOKEN_URI
    return {
        "provider": app.provider,
        "account": str(settings.imap_user or "").lower(),
        "client_id": app.client_id,
        "scopes": list(app.scopes),
        "endpoint": endpoint,
        "stored_in": make_url(settings.effective_database_url)
        .render_as_string(hide_password=True) + " (table oauth_token)",
    }


def sign_in_and_store(settings: Any, engine: Engine, now: datetime, *,
                      say: Callable[[str], None], ask: Callable[[str], str] | None = None,
                      port: int = 0, testing_app: bool = False) -> dict[str, Any]:
    """Run the provider's interactive sign-in for the mailbox login and store the result."""
    app = OAuthApp.from_settings(settings)
    account = str(settings.imap_user or "").lower()
    grant = provider_tokens(app).sign_in(login_hint=account, say=say, ask=ask,
                                         open_browser=ask is None, port=port,
                                         testing_app=testing_app, now=now)
    if grant.identity and grant.identity.lower() != account:
        if app.provider == GOOGLE:  # Gmail refuses a token of another account outright
            raise OAuthError(f"you signed in as {grant.identity}, but Introloop reads "
                             f"{account}: run this again and choose {account} (or change "
                             "INTROLOOP_IMAP_USER)")
        # Microsoft: a delegated token may open a shared mailbox its user has access to
        say(f"note: you signed in as {grant.identity}; Introloop opens {account} with it "
            "(fine for a shared mailbox that account may use)")
    store_sign_in(engine, settings.secret_bytes(), app, account, grant, now)
    return {
        "provider": app.provider,
        "account": account,
        "identity": grant.identity,
        "scopes": list(app.scopes),
        "refresh_expires_at": grant.refresh_expires_at.isoformat()
        if grant.refresh_expires_at else None,
        "expiry_reason": grant.expiry_reason,
    }

"""Stand-ins for Google's and Microsoft's token services, served over HTTPS on 127.0.0.1 with a
throwaway CA (trustme), for the OAuth tests, which load this file by path (tests/ is no package)."""

from __future__ import annotations

import base64
import json
import ssl
import time
from pathlib import Path
from typing import Any

import trustme
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from service.adapters.oauth import GOOGLE_SCOPES, MICROSOFT_SCOPES

ACCOUNT = "referrals@example.test"


def https_server(tmp: Path) -> tuple[HTTPServer, Path]:
    """A started HTTPS server and the CA bundle that trusts it (for REQUESTS_CA_BUNDLE)."""
    ca = trustme.CA()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    bundle = tmp / "test-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=ctx)
    server.start()
    return server, bundle


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """An id_token as a token endpoint returns it (its signature is not checked by clients
    that get it straight from the token endpoint over TLS)."""
    return f"{b64url({'alg': 'RS256', 'typ': 'JWT'})}.{b64url(claims)}.c2ln"


def json_response(data: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json")


class FakeGoogle:
    """Google's token endpoint: authorization-code and refresh-token grants."""

    def __init__(self, server: HTTPServer):
        self.url = server.url_for("/token")
        self.refresh_token = "rt-1"
        self.issued = 0
        self.rotate = False
        self.revoked = False
        self.lifetime: int | None = None  # refresh_token_expires_in, when Google limits it
        self.grants: list[dict[str, str]] = []
        server.expect_request("/token", method="POST").respond_with_handler(self.token)

    def token(self, request: Request) -> Response:
        form = request.form.to_dict()
        self.grants.append(form)
        # the client authenticates in the body (google-auth) or with Basic auth (oauthlib)
        basic = request.authorization
        client = (basic.username, basic.password) if basic else (form.get("client_id"),
                                                                  form.get("client_secret"))
        assert client == ("cid.apps.googleusercontent.com", "csecret")
        if form["grant_type"] == "authorization_code":
            assert form["code"] == "the-code" and form.get("code_verifier")  # PKCE
            body = self._tokens(refresh=True)
            body["id_token"] = unsigned_jwt({"iss": "https://accounts.google.com",
                                             "email": ACCOUNT, "aud": client[0]})
            if self.lifetime:
                body["refresh_token_expires_in"] = self.lifetime
            return json_response(body)
        assert form["grant_type"] == "refresh_token"
        if self.revoked or form["refresh_token"] != self.refresh_token:
            return json_response({"error": "invalid_grant",
                                  "error_description": "Token has been expired or revoked."},
                                 400)
        if self.rotate:
            self.refresh_token = f"rt-{self.issued + 2}"
        return json_response(self._tokens(refresh=self.rotate))

    def _tokens(self, refresh: bool) -> dict[str, Any]:
        self.issued += 1
        body: dict[str, Any] = {"access_token": f"at-{self.issued}", "expires_in": 3599,
                                "token_type": "Bearer", "scope": " ".join(GOOGLE_SCOPES)}
        if refresh:
            body["refresh_token"] = self.refresh_token
        return body


class FakeMicrosoft:
    """An Entra ID tenant: OpenID metadata, device-code and token endpoints."""

    CLIENT = "11111111-2222-3333-4444-555555555555"

    def __init__(self, server: HTTPServer):
        self.authority = server.url_for("/tenant-1")
        self.issuer = server.url_for("/tenant-1/v2.0")
        self.refresh_token = "ms-rt-1"
        self.issued = 0
        self.pending = 1  # the operator needs one poll to type the code
        self.revoked = False
        self.grants: list[dict[str, str]] = []
        base = self.authority
        server.expect_request("/tenant-1/v2.0/.well-known/openid-configuration").respond_with_json({
            "issuer": self.issuer,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        })
        server.expect_request("/tenant-1/oauth2/v2.0/devicecode", method="POST") \
            .respond_with_handler(self.devicecode)
        server.expect_request("/tenant-1/oauth2/v2.0/token", method="POST") \
            .respond_with_handler(self.token)

    def devicecode(self, request: Request) -> Response:
        if request.form["client_id"] != self.CLIENT:
            return self.unknown_client(request.form["client_id"])
        scopes = request.form["scope"].split()
        assert set(MICROSOFT_SCOPES) <= set(scopes) and "offline_access" in scopes
        return json_response({
            "device_code": "dc-1", "user_code": "ABCD-EFGH", "interval": 0, "expires_in": 900,
            "verification_uri": "https://microsoft.com/devicelogin",
            "message": "To sign in, use a web browser to open the page "
                       "https://microsoft.com/devicelogin and enter the code ABCD-EFGH.",
        })

    def token(self, request: Request) -> Response:
        form = request.form.to_dict()
        self.grants.append(form)
        if form["client_id"] != self.CLIENT:
            return self.unknown_client(form["client_id"])
        if form["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code":
            if self.pending:
                self.pending -= 1
                return json_response({"error": "authorization_pending",
                                      "error_description": "AADSTS70016: pending"}, 400)
            return json_response(self._tokens())
        assert form["grant_type"] == "refresh_token"
        if self.revoked or form["refresh_token"] != self.refresh_token:
            return json_response({
                "error": "invalid_grant",
                "error_description": "AADSTS70008: The provided authorization code or refresh "
                "token has expired due to inactivity.\r\nTrace ID: 0000"}, 400)
        self.refresh_token = f"ms-rt-{self.issued + 1}"  # Microsoft rotates on every use
        return json_response(self._tokens())

    @staticmethod
    def unknown_client(client_id: str) -> Response:
        return json_response({"error": "unauthorized_client", "error_description":
                              f"AADSTS700016: Application with identifier '{client_id}' was "
                              "not found in the directory.\r\nTrace ID: 1"}, 400)

    def _tokens(self) -> dict[str, Any]:
        self.issued += 1
        now = int(time.time())  # msal checks the id_token against the real clock
        claims = {"iss": self.issuer, "aud": self.CLIENT, "iat": now, "exp": now + 3600,
                  "sub": "s-1", "oid": "u-1", "tid": "tenant-1",
                  "preferred_username": ACCOUNT}
        return {"token_type": "Bearer", "scope": " ".join(MICROSOFT_SCOPES),
                "expires_in": 3600, "ext_expires_in": 3600,
                "access_token": f"ms-at-{self.issued}", "refresh_token": self.refresh_token,
                "id_token": unsigned_jwt(claims),
                "client_info": b64url({"uid": "u-1", "utid": "tenant-1"})}

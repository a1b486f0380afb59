"""SERMAS access tokens: fetch and refresh through the platform's REST API.

The MQTT username is a JWT access token; tokens are short-lived (minutes).
Sources (all standard-library HTTP, JSON bodies, Keycloak-style answers):

* ``ClientCredentials``: ``POST {base}/api/platform/token/access_token`` with
  ``{appId, clientId, clientSecret}``; refresh at ``.../refresh_token`` with
  ``{refreshToken, appId, clientId, clientSecret}`` and the access token as bearer.
* ``UserLogin``: ``POST {base}/api/auth/login`` with ``{appId, username, password, ts}``;
  refresh at ``/api/auth/refresh``.
* ``StaticToken``: a token you already have (refreshed through the platform if
  a refresh token and a base URL are given).
* ``ProviderToken``: any callable returning a token string or an answer dict.

Tokens never appear in logs, reprs or exception messages.
"""
from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Optional, Union

from .errors import SermasBusError

logger = logging.getLogger("sermas_bus")


class AuthError(SermasBusError):
    """A token could not be obtained or refreshed."""


class AuthRejected(AuthError):
    """The platform refused the credentials or the refresh token (HTTP 401/403)."""


class AuthRequestError(AuthError):
    """The platform called the request malformed (HTTP 400/404/422...)."""


class AuthServerError(AuthError):
    """The platform answered HTTP 5xx.  Its token endpoints pass every
    identity-provider failure on as a 500, so this is also what a refused
    refresh token looks like there."""


class AuthUnreachable(AuthError, ConnectionError):
    """The REST API could not be reached (network, DNS, time-out, HTTP 5xx)."""


class AuthBadAnswer(AuthError):
    """The platform answered, but not with a usable token."""


def jwt_claims(token: str) -> Dict[str, Any]:
    """The claims of a JWT, *unverified* (the broker and API verify; we only
    read ``exp`` to know when to refresh).  Raises ValueError if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT: expected three dot-separated parts")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a JWT: undecodable claims ({exc.__class__.__name__})") from None
    if not isinstance(claims, dict):
        raise ValueError("not a JWT: claims are not a JSON object")
    return claims


@dataclass
class Token:
    """An access token and what is known about its life."""

    access_token: str = field(repr=False)
    refresh_token: Optional[str] = field(default=None, repr=False)
    expires_at: Optional[float] = None          # unix time, from the JWT's exp or expires_in
    claims: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_answer(cls, answer: Dict[str, Any], now: Optional[float] = None) -> "Token":
        now = time.time() if now is None else now
        access = answer.get("access_token") or answer.get("accessToken") or answer.get("token")
        if not isinstance(access, str) or not access:
            raise AuthBadAnswer(f"the token answer has no access_token (keys: {sorted(answer)})")
        refresh = answer.get("refresh_token") or answer.get("refreshToken")
        return cls.from_string(access, refresh if isinstance(refresh, str) else None,
                               expires_in=answer.get("expires_in"), now=now)

    @classmethod
    def from_string(cls, access: str, refresh: Optional[str] = None, expires_in: Any = None,
                    now: Optional[float] = None) -> "Token":
        now = time.time() if now is None else now
        try:
            claims = jwt_claims(access)
        except ValueError:
            claims = {}
        expires_at: Optional[float] = None
        if isinstance(claims.get("exp"), (int, float)):
            expires_at = float(claims["exp"])
        elif isinstance(expires_in, (int, float)) and expires_in > 0:
            expires_at = now + float(expires_in)
        return cls(access, refresh, expires_at, claims)

    def seconds_left(self, now: Optional[float] = None) -> Optional[float]:
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def __repr__(self) -> str:
        exp = "unknown" if self.expires_at is None else \
            datetime.fromtimestamp(self.expires_at, timezone.utc).isoformat(timespec="seconds")
        return f"<Token expires={exp} refreshable={self.refresh_token is not None}>"


def post_json(url: str, body: Dict[str, Any], bearer: Optional[str] = None, timeout: float = 10.0) -> Dict[str, Any]:
    """POST a JSON body, return the JSON answer (an object); errors -> AuthError subclasses."""
    data = json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    if bearer:
        req.add_header("Authorization", f"Bearer {bearer}")
    answer = _send(req, url, "POST", timeout)
    if not isinstance(answer, dict):
        raise AuthBadAnswer(f"POST {url} answered with JSON that is not an object")
    return answer


def _send(req: urllib.request.Request, url: str, method: str, timeout: float) -> Any:
    """Send, decode the JSON answer; HTTP and network errors -> AuthError subclasses."""
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        exc.close()
        if exc.code in (401, 403):
            raise AuthRejected(f"{method} {url} was refused (HTTP {exc.code}{detail}): check the app id, "
                               "client id and secret, or log in again") from None
        if exc.code >= 500:
            raise AuthServerError(f"{method} {url} failed on the server (HTTP {exc.code}{detail}): the platform "
                                  "answers this when its identity provider refuses (e.g. a stale refresh "
                                  "token) or is down; try again later") from None
        raise AuthRequestError(f"{method} {url} was rejected as a bad request (HTTP {exc.code}{detail}); "
                               "check the base URL and the parameters") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AuthUnreachable(f"cannot reach the SERMAS API at {url}: {reason}; is base_url right and "
                              "the platform running?") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise AuthBadAnswer(f"{method} {url} answered with something that is not JSON ({len(raw)} bytes)") from None


def get_json(url: str, bearer: Optional[str] = None, timeout: float = 10.0) -> Any:
    """GET a JSON answer; errors -> the same AuthError subclasses as post_json."""
    req = urllib.request.Request(url, method="GET", headers={"Accept": "application/json"})
    if bearer:
        req.add_header("Authorization", f"Bearer {bearer}")
    return _send(req, url, "GET", timeout)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return ""
    msg = body.get("message") or body.get("error") if isinstance(body, dict) else None
    return f": {msg}" if isinstance(msg, str) and len(msg) < 200 else ""


class TokenSource:
    """Something that can give a token and refresh it."""

    def fetch(self) -> Token:
        raise NotImplementedError

    def refresh(self, token: Token) -> Token:
        """Default: fetch a new one."""
        return self.fetch()


class ClientCredentials(TokenSource):
    def __init__(self, base_url: str, app_id: str, client_id: str, client_secret: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.app_id, self.client_id, self._secret, self.timeout = app_id, client_id, client_secret, timeout

    def fetch(self) -> Token:
        answer = post_json(f"{self.base_url}/api/platform/token/access_token",
                           {"appId": self.app_id, "clientId": self.client_id, "clientSecret": self._secret},
                           timeout=self.timeout)
        return Token.from_answer(answer)

    def refresh(self, token: Token) -> Token:
        if not token.refresh_token:
            return self.fetch()
        try:
            answer = post_json(f"{self.base_url}/api/platform/token/refresh_token",
                               {"refreshToken": token.refresh_token, "appId": self.app_id,
                                "clientId": self.client_id, "clientSecret": self._secret},
                               bearer=token.access_token, timeout=self.timeout)
        except (AuthRejected, AuthRequestError, AuthServerError) as exc:
            # the platform answers a refused refresh with HTTP 500: any refusal
            # falls back to the client credentials
            logger.info("refresh failed (%s); fetching a new access token with the client credentials",
                        type(exc).__name__)
            return self.fetch()
        return Token.from_answer(answer)

    def __repr__(self) -> str:
        return f"<ClientCredentials {self.base_url} app={self.app_id} client={self.client_id}>"


class UserLogin(TokenSource):
    """A user's login (``/api/auth/login``).  ``client_id``: the platform's
    default is ``<appId>-application``; the refresh endpoint needs it."""

    def __init__(self, base_url: str, app_id: str, username: str, password: str, timeout: float = 10.0,
                 client_id: Optional[str] = None):
        self.base_url = base_url.rstrip("/")
        self.app_id, self.username, self._password, self.timeout = app_id, username, password, timeout
        self.client_id = client_id or f"{app_id}-application"

    def fetch(self) -> Token:
        answer = post_json(f"{self.base_url}/api/auth/login",
                           {"appId": self.app_id, "username": self.username, "password": self._password,
                            "clientId": self.client_id, "ts": datetime.now(timezone.utc).isoformat()},
                           timeout=self.timeout)
        return Token.from_answer(answer)

    def refresh(self, token: Token) -> Token:
        if not token.refresh_token:
            return self.fetch()
        try:
            answer = post_json(f"{self.base_url}/api/auth/refresh",
                               {"refreshToken": token.refresh_token, "clientId": self.client_id},
                               bearer=token.access_token, timeout=self.timeout)
        except (AuthRejected, AuthRequestError, AuthServerError) as exc:
            logger.info("refresh failed (%s); logging in again", type(exc).__name__)
            return self.fetch()
        return Token.from_answer(answer)

    def __repr__(self) -> str:
        return f"<UserLogin {self.base_url} app={self.app_id} user={self.username}>"


class StaticToken(TokenSource):
    """A given token; refreshable through the platform when it can be."""

    def __init__(self, token: str, refresh_token: Optional[str] = None, base_url: Optional[str] = None,
                 app_id: Optional[str] = None, client_id: Optional[str] = None,
                 client_secret: Optional[str] = None):
        self._token = Token.from_string(token, refresh_token)
        self._refresher = (ClientCredentials(base_url, app_id or "", client_id or "", client_secret or "")
                           if base_url and refresh_token else None)

    def fetch(self) -> Token:
        return self._token

    def refresh(self, token: Token) -> Token:
        if self._refresher is None:
            raise AuthError("the token cannot be refreshed: pass refresh_token (and base_url), "
                            "client credentials, or a token_provider")
        return self._refresher.refresh(token)


class ProviderToken(TokenSource):
    """``provider()`` returns a token string or a token answer dict; called on
    every fetch and refresh (for custom login flows)."""

    def __init__(self, provider: Callable[[], Union[str, Dict[str, Any]]]):
        if not callable(provider):
            raise TypeError("token_provider must be callable")
        self._provider = provider

    def fetch(self) -> Token:
        value = self._provider()
        if isinstance(value, str):
            return Token.from_string(value)
        if isinstance(value, dict):
            return Token.from_answer(value)
        raise AuthBadAnswer(f"token_provider returned {type(value).__name__}; expected str or dict")

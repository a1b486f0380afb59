"""A local SERMAS token endpoint: the platform's REST shapes, real HS256 JWTs.

For tests, notebooks and the local bus.  It answers, on a free loopback port:

* ``POST /api/platform/token/access_token`` (alias ``/api/platform/token``)
  ``{appId, clientId, clientSecret}`` -> Keycloak-style token answer;
* ``POST /api/platform/token/refresh_token`` (alias ``/refresh``)
  ``{refreshToken, appId, clientId, clientSecret}`` -> a new answer.  As on the
  platform it is not public: it needs ``Authorization: Bearer <access token>``
  (401 without a valid one); an unknown refresh token is an identity-provider
  failure, HTTP 500; without ``refreshToken`` but with the client's secret it
  issues a fresh client-credentials token;
* ``POST /api/auth/login`` ``{appId, username, password}`` (``clientId``
  optional) and ``/api/auth/refresh`` ``{refreshToken, clientId}`` (public; a
  missing ``clientId`` or unknown token is HTTP 500, as Keycloak's failures are).

Access tokens live 12 h by default, as in the platform's reference deployment.

And the discovery endpoints, from ``topics`` (resource -> name -> template,
default: the table shipped in ``sermas_bus/data/topics.json``):

* ``GET /api/platorm/topics`` (sic, the platform's spelling; public):
  ``{"resources": {resource: [scope, ...]}}``;
* ``GET /api/platorm/topics/user`` (Bearer): the same, limited to the token's
  ``permissions`` claim;
* ``GET /api/platform/app/<appId>/client/<clientId>/topics`` (Bearer): the
  templates the client's permissions allow.

Access tokens are JWTs signed with ``secret`` (HS256) whose claims carry
``sub``, ``appId``, ``clientId``, ``iat``, ``exp`` and a serial ``jti``; an
MQTT broker plugin can verify them with the same secret.  Standard library only.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["TokenServer", "make_jwt", "verify_jwt"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(claims: Dict[str, Any], secret: bytes) -> str:
    """An HS256 JWT with these claims."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret, f"{header}.{body}".encode("ascii"), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(sig)}"


def verify_jwt(token: str, secret: bytes, now: Optional[float] = None) -> Dict[str, Any]:
    """Claims of a valid, unexpired HS256 JWT; ValueError saying why not."""
    try:
        header, body, sig = token.split(".")
    except ValueError:
        raise ValueError("not a JWT") from None
    good = hmac.new(secret, f"{header}.{body}".encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(_b64(good), sig):
        raise ValueError("bad signature")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if float(claims.get("exp", 0)) <= (time.time() if now is None else now):
        raise ValueError("expired")
    return claims


class TokenServer:
    """Issues JWTs for configured clients and users (see the module docstring).

    ``clients``: {(appId, clientId): clientSecret}; ``users``: {(appId, username): password};
    ``ttl``: access token lifetime in seconds.  ``issued`` lists every token
    issued, in order, as (kind, claims)."""

    def __init__(self, secret: Optional[bytes] = None, ttl: float = 12 * 3600.0,
                 clients: Optional[Dict[Tuple[str, str], str]] = None,
                 users: Optional[Dict[Tuple[str, str], str]] = None, host: str = "127.0.0.1",
                 claims: Optional[Dict[Tuple[str, str, str], Dict[str, Any]]] = None,
                 topics: Optional[Dict[str, Dict[str, str]]] = None):
        self.secret = secret or secrets.token_bytes(32)
        self.ttl = float(ttl)
        self.clients = dict(clients or {})
        self.users = dict(users or {})
        # (kind, appId, subject) -> extra claims of its tokens (permissions, superuser)
        self.claims = dict(claims or {})
        self.topics = topics if topics is not None else _shipped_topics()
        self.issued: List[Tuple[str, Dict[str, Any]]] = []
        self.requests: List[Tuple[str, Dict[str, Any]]] = []
        self._refresh: Dict[str, Tuple[str, str, str]] = {}   # refresh token -> (kind, appId, subject)
        self._lock = threading.Lock()
        self._serial = 0
        server = self
        self._httpd = ThreadingHTTPServer((host, 0), _make_handler(server))
        self._httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "TokenServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="sermas-token-server",
                                            daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "TokenServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def issue(self, app_id: str, subject: str, kind: str = "client", ttl: Optional[float] = None,
              **extra: Any) -> Dict[str, Any]:
        """A token answer for subject in app_id (also usable directly by tests)."""
        now = time.time()
        with self._lock:
            self._serial += 1
            serial = self._serial
        life = self.ttl if ttl is None else float(ttl)
        extra = {**self.claims.get((kind, app_id, subject), {}), **extra}
        claims = {"sub": subject, "appId": app_id, "iat": int(now), "exp": round(now + life, 3),
                  "jti": serial, "kind": kind}
        claims.update(extra)
        if kind == "client":
            claims["clientId"] = subject
        access = make_jwt(claims, self.secret)
        refresh = f"r{serial}-{secrets.token_urlsafe(12)}"
        with self._lock:
            self._refresh[refresh] = (kind, app_id, subject)
            self.issued.append((kind, claims))
        return {"access_token": access, "refresh_token": refresh, "expires_in": life,
                "refresh_expires_in": life * 10, "token_type": "Bearer"}

    # request handling, called from the HTTP handler threads
    def _client_token(self, body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        key = (str(body.get("appId", "")), str(body.get("clientId", "")))
        if key not in self.clients:
            return 401, {"message": "unknown client"}
        if self.clients[key] != body.get("clientSecret"):
            return 401, {"message": "invalid client credentials"}
        return 200, self.issue(key[0], key[1], "client")

    def _use_refresh_token(self, body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        with self._lock:
            known = self._refresh.pop(str(body.get("refreshToken", "")), None)
        if known is None:   # Keycloak refuses; the platform passes that on as a 500
            return 500, {"message": "Internal server error", "error": "invalid refresh token"}
        kind, app_id, subject = known
        return 200, self.issue(app_id, subject, kind)

    def _bearer_claims(self, authorization: Optional[str]) -> Optional[Dict[str, Any]]:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        try:
            return verify_jwt(authorization[len("Bearer "):], self.secret)
        except ValueError:
            return None

    def _tree(self, permissions: Optional[List[str]]) -> Dict[str, List[str]]:
        tree: Dict[str, List[str]] = {}
        for names in self.topics.values():
            for template in names.values():
                rs = _resource_scope(template)
                if _allowed(permissions, rs) and rs is not None and rs[1] not in tree.setdefault(rs[0], []):
                    tree[rs[0]].append(rs[1])
        return {res: scopes for res, scopes in tree.items() if scopes}

    def _handle_get(self, path: str, authorization: Optional[str] = None) -> Tuple[int, Any]:
        """The discovery endpoints (see the module docstring)."""
        with self._lock:
            self.requests.append((path, {}))
        if path == "/api/platorm/topics":
            return 200, {"resources": self._tree(None)}
        parts = path.strip("/").split("/")
        if path == "/api/platorm/topics/user" or (len(parts) == 7 and parts[:3] == ["api", "platform", "app"]
                                                 and parts[4] == "client" and parts[6] == "topics"):
            bearer = self._bearer_claims(authorization)
            if bearer is None:
                return 401, {"message": "Unauthorized", "statusCode": 401}
            if path == "/api/platorm/topics/user":
                return 200, {"resources": self._tree(bearer.get("permissions"))}
            app_id, client_id = parts[3], parts[5]
            if (app_id, client_id) not in self.clients:
                return 404, {"message": "client not found", "statusCode": 404}
            permissions = self.claims.get(("client", app_id, client_id), {}).get("permissions")
            return 200, [t for names in self.topics.values() for t in names.values()
                         if _allowed(permissions, _resource_scope(t))]
        return 404, {"message": f"no route {path}"}

    def _handle(self, path: str, body: Dict[str, Any],
                authorization: Optional[str] = None) -> Tuple[int, Dict[str, Any]]:
        with self._lock:
            self.requests.append((path, body))
        app = str(body.get("appId", ""))
        if path in ("/api/platform/token/access_token", "/api/platform/token"):
            return self._client_token(body)
        if path in ("/api/platform/token/refresh_token", "/api/platform/token/refresh"):
            if self._bearer_claims(authorization) is None:
                return 401, {"message": "Unauthorized", "statusCode": 401}
            if not body.get("refreshToken") and body.get("clientSecret"):
                return self._client_token(body)
            return self._use_refresh_token(body)
        if path == "/api/auth/refresh":
            if not body.get("clientId"):
                return 500, {"message": "Internal server error", "error": "clientId is required"}
            return self._use_refresh_token(body)
        if path == "/api/auth/login":
            key = (app, str(body.get("username", "")))
            if self.users.get(key) is None or self.users[key] != body.get("password"):
                return 401, {"message": "invalid username or password"}
            return 200, self.issue(app, key[1], "user")
        return 404, {"message": f"no route {path}"}


def _shipped_topics() -> Dict[str, Dict[str, str]]:
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "topics.json")
    with open(path, encoding="utf-8") as f:
        table: Dict[str, Dict[str, str]] = json.load(f)
    return table


def _resource_scope(template: str) -> Optional[Tuple[str, str]]:
    levels = template.split("/")
    return (levels[2], levels[3]) if len(levels) >= 4 else None


def _allowed(permissions: Optional[List[str]], rs: Optional[Tuple[str, str]]) -> bool:
    return rs is not None and (permissions is None or "{}:{}".format(*rs) in permissions)


def _make_handler(server: TokenServer) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:   # noqa: N802 (http.server's naming)
            status, answer = server._handle_get(self.path.split("?")[0], self.headers.get("Authorization"))
            self._answer(status, answer)

        def do_POST(self) -> None:   # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body is not an object")
            except ValueError:
                self._answer(400, {"message": "body must be a JSON object"})
                return
            status, answer = server._handle(self.path.split("?")[0], body, self.headers.get("Authorization"))
            self._answer(status, answer)

        def _answer(self, status: int, answer: Any) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args: Any) -> None:   # keep tokens out of stderr
            pass

    return Handler

"""A local SERMAS-compatible bus for tests and notebooks.

``LocalBus`` starts, on free 127.0.0.1 ports:

* a ``mosquitto`` (``sermas_bus.testing.Mosquitto``: plain TCP, websockets on
  ``/mqtt``, and with ``tls=True`` also mqtts and wss with a throw-away CA)
  whose listeners all run the ``sermas_jwt_auth`` plugin built with this
  package (``plugin/sermas_jwt_auth.c``);
* a ``sermas_bus.tokens.TokenServer``, the platform's REST token endpoints,
  issuing HS256 JWTs signed with the same random secret.

So a client authenticates and is authorised as on the SERMAS platform::

    from sermas_bus.testing import LocalBus
    import sermas_bus.client as mqtt

    apps = {"myapp": {"clients": {"svc": "s3cret"}, "users": {"alice": "pw"}}}
    with LocalBus(apps=apps, token_ttl=300) as bus:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.username_pw_set(bus.issue_token("myapp", "svc"), "sermas")
        client.connect(bus.mqtt_url)                 # ws://127.0.0.1:<port>/mqtt
        client.publish("app/myapp/ui/status", "{}", qos=1).wait_for_publish(5)

        # or the platform's REST flow, as a service would do it:
        from sermas_bus.auth import ClientCredentials
        token = ClientCredentials(bus.api_url, "myapp", "svc", "s3cret").fetch()

What the broker enforces (details in ``plugin/sermas_jwt_auth.c``):

* the MQTT username must be an HS256 JWT signed with ``secret``, with an
  ``exp`` in the future and an ``appId``; otherwise the CONNACK says
  "Not authorized" (``sermas_bus.errors.NotAuthorizedError``), and
  ``log()`` tells why ("JWT has expired", "JWT signature does not verify ...");
* the platform's ACL rule: a client may publish, subscribe and receive on
  ``app/<appId>/<resource>/<scope>[/...]`` and ``user/<appId>/<resource>/<scope>[/...]``
  of its token's appId only, with ``<resource>`` and ``<scope>`` named (the
  platform grants ``<resource>:<scope>`` permissions: ``app/myapp/#`` is
  refused); a token with a ``permissions`` claim (``apps=`` below) only for
  those; a ``superuser`` token everywhere; ``$share/<group>/...`` only with
  ``LocalBus(shared_subscriptions=True)``.  Anything else is refused: SUBACK
  0x87, and with MQTT 5 a QoS 1/2 publish gets PUBACK/PUBREC 0x87 ("Not
  authorized", ``PublishError`` from ``wait_for_publish``); MQTT 3.1.1 and
  QoS 0 publishes are dropped silently;
* the token's ``exp`` is checked on every access, so a connection whose token
  expires stays connected but loses all topic access until it reconnects
  with a fresh token (``Client.reauthenticate``).

One port, as the platform: ``api_url`` serves the REST endpoints and
``/mqtt`` (websockets relayed to the broker) together, so
``SermasClient(bus.api_url, app_id=..., client_id=..., client_secret=...)``
needs nothing else; ``tcp_url`` and ``url(kind)`` reach the broker's own
listeners.  The front is aiohttp (``pip install 'sermas_bus[localbus]'``);
the rest is the standard library and the plugin's shared library, and only
``publish()`` needs the ``sermas_bus._core`` extension.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import ssl
import tempfile
import weakref
from typing import Any, Dict, Mapping, Optional, Tuple

from .testing import Mosquitto
from .tokens import TokenServer, _shipped_topics

__all__ = ["LocalBus", "plugin_path"]

# mosquitto logs each client's username, here an access token
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")

PLUGIN_FILE = "_sermas_jwt_auth.so"
PLUGIN_ENV = "SERMAS_BUS_JWT_PLUGIN"

_MISSING_PLUGIN = (
    "sermas_bus.testing.LocalBus needs the mosquitto plugin {path}, which was not built. "
    "Install the Debian packages mosquitto-dev, libssl-dev and libcjson-dev "
    "(apt-get install mosquitto-dev libssl-dev libcjson-dev), then rebuild sermas_bus "
    "(pip install -e . or python setup.py build_ext --inplace); or point {env} at a built "
    "sermas_jwt_auth plugin."
)


def plugin_path(path: Optional[str] = None) -> str:
    """Path of the ``sermas_jwt_auth`` mosquitto plugin: ``path``, else
    ``$SERMAS_BUS_JWT_PLUGIN``, else the one built next to this module.
    Raises RuntimeError naming the Debian packages when it is missing."""
    if path is None:
        path = os.environ.get(PLUGIN_ENV) or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                          PLUGIN_FILE)
    if not os.path.isfile(path):
        raise RuntimeError(_MISSING_PLUGIN.format(path=path, env=PLUGIN_ENV))
    return os.path.abspath(path)


def _check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("{} must be a non-empty str, not {!r}".format(what, value))
    return value


def _normalise_apps(apps: Optional[Mapping[str, Any]]) -> Dict[str, Dict[str, Dict[str, str]]]:
    out: Dict[str, Dict[str, Dict[str, str]]] = {}
    for app_id, spec in (apps or {}).items():
        _check_name("app id", app_id)
        if any(c in app_id for c in "/+#"):
            raise ValueError("app id {!r}: '/', '+' and '#' cannot appear in an appId "
                             "(it is a topic level)".format(app_id))
        spec = dict(spec or {})
        unknown = set(spec) - {"clients", "users"}
        if unknown:
            raise ValueError("app {!r}: unknown keys {} (expected 'clients' and 'users')".format(
                app_id, sorted(unknown)))
        entry: Dict[str, Dict[str, Any]] = {}
        for kind in ("clients", "users"):
            table = {}
            for name, value in dict(spec.get(kind) or {}).items():
                who = "{} {!r} in app {!r}".format(kind[:-1], name, app_id)
                _check_name("{} name in app {!r}".format(kind[:-1], app_id), name)
                table[name] = _normalise_credential(who, value)
            entry[kind] = table
        out[app_id] = entry
    return out


def _normalise_credential(who: str, value: Any) -> Dict[str, Any]:
    """A secret string (every permission of the app), or
    ``{"secret": ..., "permissions": ["dialogue:messages", ...], "superuser": bool}``."""
    if isinstance(value, str):
        return {"secret": _check_name("secret of " + who, value), "permissions": None, "superuser": False}
    if not isinstance(value, Mapping):
        raise TypeError("{}: expected a secret string or a dict with 'secret' and 'permissions'".format(who))
    unknown = set(value) - {"secret", "permissions", "superuser"}
    if unknown:
        raise ValueError("{}: unknown keys {} (expected 'secret', 'permissions', 'superuser')".format(
            who, sorted(unknown)))
    perms = value.get("permissions")
    if perms is not None:
        if isinstance(perms, str) or not all(isinstance(p, str) for p in perms):
            raise TypeError("{}: permissions must be a list of '<resource>:<scope>' strings".format(who))
        for perm in perms:
            res, _, scope = perm.partition(":")
            if not res or not scope or any(c in perm for c in ",/+#"):
                raise ValueError("{}: permission {!r} must be '<resource>:<scope>' (e.g. 'dialogue:messages')"
                                 .format(who, perm))
        perms = list(perms)
    return {"secret": _check_name("secret of " + who, value.get("secret")), "permissions": perms,
            "superuser": bool(value.get("superuser", False))}


def _check_extra_topics(extra: Optional[Mapping[str, Any]]) -> Dict[str, Dict[str, str]]:
    """``{"mymod": {"thing": "app/:appId/mymod/thing/:id"}}``: topics a module
    adds at runtime, published by the discovery endpoints with the table."""
    out: Dict[str, Dict[str, str]] = {}
    for resource, names in (extra or {}).items():
        if not isinstance(names, Mapping):
            raise TypeError("extra_topics[{!r}] must map names to templates".format(resource))
        for name, template in names.items():
            if not isinstance(template, str) or len(template.split("/")) < 4 or \
                    template.split("/")[0] not in ("app", "user"):
                raise ValueError("extra_topics[{!r}][{!r}] = {!r}: a template is app/:appId/<resource>/<scope>[/...]"
                                 .format(resource, name, template))
            out.setdefault(str(resource), {})[str(name)] = template
    return out


def _token_claims(credential: Dict[str, Any]) -> Dict[str, Any]:
    """The extra claims a credential's tokens carry (the plugin enforces them)."""
    claims: Dict[str, Any] = {}
    if credential["permissions"] is not None:
        claims["permissions"] = credential["permissions"]
    if credential["superuser"]:
        claims["superuser"] = True
    return claims


class _State:
    """What the finalizer needs; holds no reference to the LocalBus."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.tokens: Optional[TokenServer] = None
        self.tmpdir: Optional[str] = None
        self.platform: Any = None           # LocalBus.publish's connection
        self.front: Any = None              # the one-port PlatformFront


def _cleanup(state: _State) -> None:
    for attr in ("platform", "front"):
        part = getattr(state, attr)
        setattr(state, attr, None)
        if part is not None:
            try:
                part.close()
            except Exception:
                pass
    tokens, state.tokens = state.tokens, None
    if tokens is not None:
        try:
            tokens.close()
        except Exception:
            pass
    try:
        state.broker.close()
    except Exception:
        pass
    tmpdir, state.tmpdir = state.tmpdir, None
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)


class LocalBus:
    """A local SERMAS bus: mosquitto + JWT plugin + token endpoints (see the module docstring).

    ``apps``: ``{appId: {"clients": {clientId: clientSecret}, "users": {username: password}}}``,
    the credentials the token endpoints accept.  A secret string means every
    permission of the app; ``{"secret": ..., "permissions": ["dialogue:messages",
    "ui:content"]}`` limits the tokens to those ``<resource>:<scope>`` permissions,
    ``"superuser": True`` allows every topic (``system/...`` too), as the platform.
    ``shared_subscriptions``: accept ``$share/<group>/...`` filters (the
    platform refuses them; a broker set up for them would not).
    ``extra_topics``: ``{"mymod": {"thing": "app/:appId/mymod/thing/:id"}}``,
    topics a module adds, served by the discovery endpoints with the table
    (``SermasClient.discover_topics()``).  ``token_ttl``: access token
    lifetime in seconds (default 12 h, as the platform's reference deployment).  ``tls``: also listen with TLS (``url("mqtts")``,
    ``url("wss")``, verified with ``ca_file``).  ``secret``: the HS256 key
    (default: 32 random bytes).  ``log_type``, ``binary``: as for ``Mosquitto``.
    ``plugin``: path of the plugin's shared library (default: the one built
    with this package, or ``$SERMAS_BUS_JWT_PLUGIN``).

    Use it as a context manager, or ``start()`` / ``close()``.  Closing stops
    the broker and the token server and removes every temporary file; a
    finalizer does the same if the object is garbage collected or the
    interpreter exits.
    """

    def __init__(self, apps: Optional[Mapping[str, Any]] = None, token_ttl: float = 12 * 3600.0,
                 tls: bool = False, *, secret: Optional[bytes] = None, log_type: str = "all",
                 binary: Optional[str] = None, plugin: Optional[str] = None,
                 ready_timeout: float = 10.0, shared_subscriptions: bool = False,
                 extra_topics: Optional[Mapping[str, Mapping[str, str]]] = None) -> None:
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise ValueError("secret must be non-empty bytes")
        self.apps = _normalise_apps(apps)
        self.shared_subscriptions = bool(shared_subscriptions)
        self.extra_topics = _check_extra_topics(extra_topics)
        self.token_ttl = float(token_ttl)
        self.tls = bool(tls)
        self.secret: bytes = secret if secret is not None else secrets.token_bytes(32)
        # both checks raise RuntimeError naming the Debian package, before anything starts
        self.broker = Mosquitto(tcp=True, websockets=True, tls=self.tls, binary=binary,
                                log_type=log_type, ready_timeout=ready_timeout)
        self.plugin = plugin_path(plugin)
        self.tmpdir: Optional[str] = None
        self.secret_file: Optional[str] = None
        self._closed = False
        self._state = _State(self.broker)
        self._finalizer = weakref.finalize(self, _cleanup, self._state)

    # ------------------------------------------------------------------ info
    @property
    def token_server(self) -> TokenServer:
        tokens = self._state.tokens
        if tokens is None:
            raise RuntimeError("LocalBus not started: call start() or use 'with'")
        return tokens

    @property
    def _front(self) -> Any:
        front = self._state.front
        if front is None:
            raise RuntimeError("LocalBus not started: call start() or use 'with'")
        return front

    @property
    def api_url(self) -> str:
        """The platform's URL, as ``SermasClient``'s ``base_url``: the REST
        endpoints and the broker (``/mqtt``) on one port, as behind the
        platform's proxy (``http://127.0.0.1:<port>``, ``https://`` with ``tls=True``)."""
        return self._front.url

    @property
    def mqtt_url(self) -> str:
        """The broker as SERMAS publishes it: MQTT over websockets at ``/mqtt``
        on the API's port (``ws://127.0.0.1:<port>/mqtt``, ``wss://`` with ``tls=True``)."""
        front = self._front
        return "{}://{}:{}/mqtt".format("wss" if front.ssl_context is not None else "ws", front.host, front.port)

    @property
    def tcp_url(self) -> str:
        """The broker over plain TCP: ``tcp://127.0.0.1:<port>``."""
        return self.url("tcp")

    def url(self, kind: str = "ws") -> str:
        """URL of a listener: ``ws``, ``tcp``, and with ``tls=True`` ``wss``, ``mqtts``."""
        if self._state.tokens is None:
            raise RuntimeError("LocalBus not started: call start() or use 'with'")
        return self.broker.url(kind)

    @property
    def ca_file(self) -> Optional[str]:
        """CA certificate of the TLS listeners (``tls=True``), else None."""
        return self.broker.ca_file

    def log(self) -> str:
        """Text of the broker log, with access tokens replaced by ``<jwt>``; the
        plugin says there why it refused a client.  ``broker.log()`` is the raw log."""
        return _JWT.sub("<jwt>", self.broker.log())

    def is_running(self) -> bool:
        return self._state.tokens is not None and self.broker.is_running()

    def __repr__(self) -> str:
        if not self.is_running():
            return "<LocalBus stopped apps={}>".format(sorted(self.apps))
        return "<LocalBus running {} api={} apps={}>".format(self.mqtt_url, self.api_url, sorted(self.apps))

    # ---------------------------------------------------------------- tokens
    def issue_token(self, app_id: str, client_id: str = "localbus-client", ttl: Optional[float] = None,
                    **claims: Any) -> str:
        """A fresh access token (JWT) for ``client_id`` in ``app_id``, valid for
        ``ttl`` seconds (default ``token_ttl``; <= 0 gives an expired token).
        Extra keyword arguments become extra claims.  Any app id is accepted,
        configured or not; the token server records it in ``token_server.issued``."""
        _check_name("app_id", app_id)
        _check_name("client_id", client_id)
        return self.token_server.issue(app_id, client_id, "client", ttl, **claims)["access_token"]

    def issue(self, app_id: str, client_id: str = "localbus-client", ttl: Optional[float] = None,
              **claims: Any) -> Dict[str, Any]:
        """Like ``issue_token`` but the whole token answer (``access_token``,
        ``refresh_token``, ``expires_in``...), as the REST endpoint returns it."""
        _check_name("app_id", app_id)
        _check_name("client_id", client_id)
        return self.token_server.issue(app_id, client_id, "client", ttl, **claims)

    # ------------------------------------------------------------ the platform
    def publish(self, target: str, payload: Any = None, **params: Any) -> str:
        """Publish an event as the SERMAS platform does, for tests and notebooks:
        over MQTT 3.1.1 at QoS 0 from a superuser connection (kept open until
        ``close()``), the topic filled by the platform's rules (explicit
        ``params`` on top; the payload is read only when it is a dict with a
        truthy ``appId``, as ``MqttService.publish`` does).  ``payload``: a
        dict/list (JSON), ``bytes`` (raw) or ``str``.  Returns the topic.  Needs
        the ``sermas_bus._core`` extension."""
        from . import json as sbjson, topics
        fill_from = payload if isinstance(payload, dict) and payload.get("appId") else None
        topic = topics.render(target, params or None, fill_from)
        if isinstance(payload, (bytes, bytearray)):
            data = bytes(payload)
        elif isinstance(payload, str):
            data = payload.encode("utf-8")
        else:
            data = sbjson.dumps(payload)
        self._platform_client().publish(topic, data, qos=0).wait_for_publish(10)
        return topic

    def _platform_client(self) -> Any:
        if self._state.platform is None:
            import sermas_bus.client as mqtt
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sermas-platform-" + secrets.token_hex(4),
                                 protocol=mqtt.MQTTv311)
            # the platform's own token outlives the bus (token_ttl is for its clients)
            client.username_pw_set(self.issue_token("platform", "sermas-api", ttl=30 * 86400, superuser=True),
                                   "sermas")
            client.connect(self.tcp_url)
            self._state.platform = client
        return self._state.platform

    # ------------------------------------------------------------- lifecycle
    def start(self) -> "LocalBus":
        """Start the token server and the broker; no-op when running."""
        if self._closed:
            raise RuntimeError("this LocalBus was closed; create a new one")
        if self._state.tokens is not None:
            return self
        try:
            self._prepare()
            clients: Dict[Tuple[str, str], str] = {}
            users: Dict[Tuple[str, str], str] = {}
            claims: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
            for app_id, spec in self.apps.items():
                for kind, table, out in (("client", spec["clients"], clients), ("user", spec["users"], users)):
                    for name, cred in table.items():
                        out[(app_id, name)] = cred["secret"]
                        claims[(kind, app_id, name)] = _token_claims(cred)
            table = _shipped_topics()
            for resource, names in self.extra_topics.items():
                table.setdefault(resource, {}).update(names)
            self._state.tokens = TokenServer(secret=self.secret, ttl=self.token_ttl, clients=clients,
                                             users=users, claims=claims, topics=table).start()
            self.broker.start()
            from ._front import PlatformFront
            self._state.front = PlatformFront(self._state.tokens, self.broker.host, self.broker.port,
                                              host=self.broker.host, ssl_context=self._front_tls()).start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop everything this LocalBus started and delete its files. Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "LocalBus":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -------------------------------------------------------------- internals
    def _front_tls(self) -> Optional[ssl.SSLContext]:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.broker.server_cert, self.broker.server_key)
        return ctx

    def _prepare(self) -> None:
        tmpdir = tempfile.mkdtemp(prefix="sermas-localbus-")
        if any(c.isspace() for c in tmpdir):
            # mosquitto's config parser splits on whitespace
            shutil.rmtree(tmpdir, ignore_errors=True)
            tmpdir = tempfile.mkdtemp(prefix="sermas-localbus-", dir="/tmp")
        self._state.tmpdir = self.tmpdir = tmpdir
        self.secret_file = os.path.join(tmpdir, "jwt-secret")
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.secret)
        plugin = self.plugin
        if any(c.isspace() for c in plugin):
            plugin = os.path.join(tmpdir, PLUGIN_FILE)
            shutil.copyfile(self.plugin, plugin)
        self.broker.listener_security = "plugin {}\nplugin_opt_secret_file {}\nplugin_opt_shared_subscriptions {}".format(
            plugin, self.secret_file, "true" if self.shared_subscriptions else "false")

"""pytest fixtures for code that talks to the SERMAS bus.

Installed with the package as the pytest plugin ``sermas_bus`` (entry point
``pytest11``), so the fixtures are available in every test session of an
environment where sermas_bus is installed:

``local_bus`` (session scope)
    a running ``sermas_bus.testing.LocalBus``: mosquitto with the SERMAS JWT
    plugin plus the platform's token endpoints.  Stopped at the end of the
    session, leaving nothing behind.

``local_bus_config`` (session scope)
    the keyword arguments ``local_bus`` passes to ``LocalBus``.  Override it
    in your ``conftest.py`` to configure apps, token lifetime or TLS::

        @pytest.fixture(scope="session")
        def local_bus_config():
            return {"apps": {"myapp": {"clients": {"svc": "s3cret"}}}, "token_ttl": 60}

    The default configures one app, ``DEFAULT_APP``, with the client
    ``DEFAULT_CLIENT`` / ``DEFAULT_CLIENT_SECRET`` and the user
    ``DEFAULT_USER`` / ``DEFAULT_USER_PASSWORD``.

A test then does::

    def test_status(local_bus):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.username_pw_set(local_bus.issue_token("testapp", "test-client"), "sermas")
        client.connect(local_bus.mqtt_url)

Without the installed entry point (e.g. running from a source tree), load
the plugin with ``-p sermas_bus.pytest_plugin`` or, in a root conftest.py,
``pytest_plugins = ["sermas_bus.pytest_plugin"]``.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator

import pytest

DEFAULT_APP = "testapp"
DEFAULT_CLIENT = "test-client"
DEFAULT_CLIENT_SECRET = "test-client-secret"
DEFAULT_USER = "test-user"
DEFAULT_USER_PASSWORD = "test-user-password"


@pytest.fixture(scope="session")
def local_bus_config() -> Dict[str, Any]:
    """Keyword arguments for the session's ``LocalBus`` (override to configure)."""
    return {
        "apps": {
            DEFAULT_APP: {
                "clients": {DEFAULT_CLIENT: DEFAULT_CLIENT_SECRET},
                "users": {DEFAULT_USER: DEFAULT_USER_PASSWORD},
            }
        },
    }


@pytest.fixture(scope="session")
def local_bus(local_bus_config: Dict[str, Any]) -> Iterator[Any]:
    """A running ``sermas_bus.testing.LocalBus`` shared by the session."""
    from .localbus import LocalBus

    with LocalBus(**local_bus_config) as bus:
        yield bus

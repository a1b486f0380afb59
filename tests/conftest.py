"""Shared fixtures: real local mosquitto brokers and unique topics."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid

import pytest


def _load_testing_module():
    """Import sermas_bus.testing without needing the compiled extension.

    ``sermas_bus.testing`` only uses the standard library.  If importing the
    package fails (e.g. ``sermas_bus/__init__.py`` imports ``_core`` and the C
    extension is not built), load the module straight from its file so that
    the broker fixtures (and the infrastructure tests) still work.
    """
    try:
        from sermas_bus import testing
        return testing
    except ImportError as exc:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "sermas_bus", "testing.py")
        if not os.path.exists(path):
            raise
        spec = importlib.util.spec_from_file_location("_sermas_bus_testing_standalone", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        module.PACKAGE_IMPORT_ERROR = exc  # for diagnostics
        return module


testing = _load_testing_module()
Mosquitto = testing.Mosquitto

DEFAULT_TIMEOUT = 60
BROKER_USERS = {"alice": "secret"}


def pytest_collection_modifyitems(config, items):
    """Give every test without an explicit timeout mark a 60 s pytest-timeout."""
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


def _full_broker():
    return Mosquitto(tcp=True, websockets=True, tls=True, auth_listener=True,
                     users=BROKER_USERS, mtls_listener=True)


@pytest.fixture(scope="session")
def broker():
    """One mosquitto for the whole session: tcp, ws, mqtts, wss, auth (alice/secret), mtls.

    Do not kill or restart it; use ``fresh_broker`` for that.
    """
    with _full_broker() as b:
        yield b


@pytest.fixture
def fresh_broker():
    """A private mosquitto for one test (same listeners as ``broker``); may be killed/restarted."""
    with _full_broker() as b:
        yield b


@pytest.fixture
def unique_topic():
    """A topic prefix unique to this test, ending in '/': ``test/<uuid>/``."""
    return "test/{}/".format(uuid.uuid4().hex)


# ---------------------------------------------------------------------------
# Fixtures for the sermas_bus.client tests (tests/test_client_*.py)
# ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def quiet_broker():
    """A session mosquitto (tcp only) that does not log every packet: for the
    high-volume tests, where ``log_type all`` would write a line per message."""
    with Mosquitto(tcp=True, websockets=False, log_type="warning") as b:
        yield b


@pytest.fixture
def make_client():
    """Factory for ``sermas_bus.client.Client`` objects that are all closed
    after the test: ``make_client()`` (VERSION2) or ``make_client(version, **kw)``."""
    import sermas_bus.client as mqtt

    made = []

    def factory(callback_api_version=None, **kwargs):
        if callback_api_version is None:
            callback_api_version = mqtt.CallbackAPIVersion.VERSION2
        client = mqtt.Client(callback_api_version, **kwargs)
        made.append(client)
        return client

    yield factory
    for client in reversed(made):
        try:
            client.close()
        except Exception:  # a test may have left it half-broken on purpose
            pass

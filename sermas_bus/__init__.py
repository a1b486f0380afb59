"""sermas_bus: the Python client for the SERMAS event bus (MQTT), on a C core.

- ``sermas_bus.SermasClient``: SERMAS topics by name, JSON payloads, tokens.
- ``sermas_bus.client``: drop-in for ``paho.mqtt.client`` (swap the import);
  ``sermas_bus.publish`` / ``sermas_bus.subscribe``: for ``paho.mqtt.publish`` /
  ``paho.mqtt.subscribe`` (``from sermas_bus import publish, subscribe``).
- ``sermas_bus.json``: the C JSON codec (``dumps`` -> bytes, ``loads``).
- ``sermas_bus.topics``: the platform's topic table, render and match.
- ``sermas_bus.errors``: the exception hierarchy.
- ``sermas_bus.testing``: a local mosquitto for tests and notebooks;
  ``sermas_bus.tokens``: a local token endpoint.
"""
from . import _core
from . import errors  # noqa: F401
from . import json  # noqa: F401
from . import topics  # noqa: F401
from .sermas import SermasClient

__version__ = "0.1.0"
paho_version = _core.paho_version

__all__ = ["SermasClient", "errors", "json", "topics", "__version__", "paho_version"]

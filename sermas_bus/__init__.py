"""sermas_bus: the Python client for the SERMAS event bus (MQTT), on a C core.

- ``sermas_bus.client``: drop-in for ``paho.mqtt.client`` (swap the import).
- ``sermas_bus.errors``: the exception hierarchy.
- ``sermas_bus.topics``: SERMAS topic names <-> MQTT topics; a filter trie for dispatch.
- ``sermas_bus.testing``: a local mosquitto for tests and notebooks.
"""
from . import _core
from . import errors  # noqa: F401

__version__ = "0.1.0"
paho_version = _core.paho_version

__all__ = ["errors", "__version__", "paho_version"]

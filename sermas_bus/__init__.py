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
try:
    from . import _core
except ImportError as _exc:   # say what to run, not "partially initialized module"
    import glob as _glob
    import os as _os
    _here = _os.path.dirname(_os.path.abspath(__file__))
    if not _glob.glob(_os.path.join(_here, "_core*.so")):
        raise ImportError(
            f"sermas_bus's C extension (sermas_bus._core) is not built in {_here}: in a source tree run "
            "`make install` (or `python setup.py build_ext --inplace`), or install the package with pip; "
            "building needs the Debian packages libpaho-mqtt-dev, libcjson-dev and a C compiler") from _exc
    raise ImportError(
        f"sermas_bus's C extension could not be loaded ({_exc}); is paho.mqtt.c installed "
        "(Debian: libpaho-mqtt1.3) and was the extension built for this Python?") from _exc
from . import errors  # noqa: F401
from . import json  # noqa: F401
from . import topics  # noqa: F401
from .sermas import SermasClient

__version__ = "0.1.0"
#: the versions of the C libraries this process loaded (a wheel bundles its own)
paho_version = _core.paho_version
cjson_version = _core.cjson_version
openssl_version = _core.openssl_version

__all__ = ["SermasClient", "errors", "json", "topics", "__version__", "paho_version", "cjson_version",
           "openssl_version"]

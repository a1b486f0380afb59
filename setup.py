"""Build the sermas_bus._core C extension against the system paho.mqtt.c and cJSON,
and the mosquitto plugin behind sermas_bus.testing.LocalBus.

Metadata lives in pyproject.toml; this file only declares the extensions and
finds the libraries:
  1. directories from PAHO_MQTT_C_DIR / CJSON_DIR / MOSQUITTO_DIR / OPENSSL_DIR
     (each with include/ and lib/),
  2. what pkg-config says, for the libraries that ship a .pc file (cJSON:
     libcjson, OpenSSL: libcrypto; paho.mqtt.c's CMake install: eclipse-paho-mqtt-c;
     Debian ships none for paho.mqtt.c and the mosquitto plugin headers),
  3. the compiler's default search paths (Debian: libpaho-mqtt-dev, libcjson-dev,
     mosquitto-dev, libssl-dev),
and stops with a message naming the packages to install when paho.mqtt.c or
cJSON is missing.

The plugin (plugin/sermas_jwt_auth.c -> sermas_bus/_sermas_jwt_auth.so) is a
plain shared library loaded by mosquitto, not a Python module: no Python
symbols, no ABI tag in its name.  It is optional: without the mosquitto plugin
headers or OpenSSL, or if it fails to compile, the package still builds and
LocalBus says which Debian packages to install.

Knobs: SERMAS_BUS_DEBUG=1 (-O0 -g, asserts on), SERMAS_BUS_SANITIZE=1 (ASan/UBSan),
SERMAS_BUS_WERROR=0/1 (warnings as errors; on by default in a git checkout).
"""
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PLUGIN = "sermas_bus._sermas_jwt_auth"
# pkg-config names, tried in order
PAHO_PC = ("eclipse-paho-mqtt-c", "paho-mqtt3cs")
CJSON_PC = ("libcjson",)
OPENSSL_PC = ("libcrypto", "openssl")

MISSING_HELP = (
    "sermas_bus: {what} not found.\n"
    "  On Debian/Ubuntu: apt-get install libpaho-mqtt-dev libcjson-dev\n"
    "  Elsewhere: install Eclipse paho.mqtt.c (>= 1.3.8, with TLS: paho-mqtt3cs) and cJSON,\n"
    "  or point PAHO_MQTT_C_DIR / CJSON_DIR at their install prefixes."
)


# the C sources of sermas_bus._core, one concern each (csrc/sb.h lists them)
CORE_SOURCES = ["callbacks.c", "client.c", "connect.c", "errors.c", "filtertrie.c", "info.c", "json.c",
                "keeper.c", "message.c", "module.c", "outbox.c", "outbox_store.c", "properties.c", "queue.c",
                "request.c", "segmap.c", "sockopt.c", "store.c", "topics.c"]


def _pkg_config_dirs(packages, sub):
    """The -I (sub "include") or -L (sub "lib") directories of the first of
    ``packages`` pkg-config knows; [] when it knows none (or is missing)."""
    exe = shutil.which(os.environ.get("PKG_CONFIG", "pkg-config"))
    if exe is None:
        return []
    flag, prefix = ("--cflags-only-I", "-I") if sub == "include" else ("--libs-only-L", "-L")
    for pkg in packages:
        try:
            out = subprocess.run([exe, flag, pkg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 universal_newlines=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return []
        if out.returncode == 0:
            return [t[len(prefix):] for t in out.stdout.split() if t.startswith(prefix)]
    return []


def _candidate_dirs(env, sub, packages=()):
    dirs = []
    if os.environ.get(env):
        dirs.append(os.path.join(os.environ[env], sub))
    for d in _pkg_config_dirs(packages, sub):
        # libcjson.pc says -I/usr/include/cjson; we include <cjson/cJSON.h>
        dirs += [d, os.path.dirname(d)] if sub == "include" else [d]
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    if sub == "include":
        dirs += ["/usr/local/include", "/usr/include"]
    else:
        dirs += [
            "/usr/local/lib",
            os.path.join("/usr/lib", multiarch) if multiarch else "/usr/lib64",
            "/usr/lib",
        ]
    return dirs


def _find(env, sub, names, packages=()):
    for d in _candidate_dirs(env, sub, packages):
        for n in names:
            if os.path.exists(os.path.join(d, n)):
                return d
    return None


def _extension():
    paho_inc = _find("PAHO_MQTT_C_DIR", "include", ["MQTTClient.h"], PAHO_PC)
    paho_lib = _find("PAHO_MQTT_C_DIR", "lib", ["libpaho-mqtt3cs.so", "libpaho-mqtt3cs.dylib"], PAHO_PC)
    cjson_inc = _find("CJSON_DIR", "include", ["cjson/cJSON.h"], CJSON_PC)
    cjson_lib = _find("CJSON_DIR", "lib", ["libcjson.so", "libcjson.dylib"], CJSON_PC)
    building = _building()
    for what, found in (
        ("paho.mqtt.c headers (MQTTClient.h)", paho_inc),
        ("paho.mqtt.c TLS library (libpaho-mqtt3cs)", paho_lib),
        ("cJSON headers (cjson/cJSON.h)", cjson_inc),
        ("cJSON library (libcjson)", cjson_lib),
    ):
        if found is None and building:
            sys.exit(MISSING_HELP.format(what=what))

    extra_compile = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Wno-unused-parameter",
                     "-Wno-missing-field-initializers", "-Wno-cast-function-type"]
    if _werror():
        extra_compile.append("-Werror")
    extra_link = []
    undef = []
    if os.environ.get("SERMAS_BUS_DEBUG"):
        extra_compile += ["-O0", "-g"]
        undef.append("NDEBUG")
    if os.environ.get("SERMAS_BUS_SANITIZE"):
        extra_compile += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        extra_link += ["-fsanitize=address,undefined"]
    sources = [os.path.join("csrc", f) for f in CORE_SOURCES]
    return Extension(
        "sermas_bus._core",
        sources=sources,
        depends=[os.path.join("csrc", h) for h in ("sb.h", "store.h", "keeper.h")],
        include_dirs=[d for d in {paho_inc, cjson_inc} if d],
        library_dirs=[d for d in {paho_lib, cjson_lib} if d],
        # zlib: the CRC-32 of the durable outbox's records (store.c)
        libraries=["paho-mqtt3cs", "cjson", "z", "pthread"],
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
        undef_macros=undef,
    )


def _werror():
    """Warnings are errors in a development tree (a git checkout) and when
    SERMAS_BUS_WERROR=1; SERMAS_BUS_WERROR=0 turns it off (an sdist built by a
    newer compiler must not fail on a new warning)."""
    flag = os.environ.get("SERMAS_BUS_WERROR")
    if flag is not None:
        return flag not in ("", "0")
    return os.path.isdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".git"))


def _building():
    return any(a.startswith(("build", "bdist", "install", "develop", "editable")) for a in sys.argv[1:])


def _plugin_extension():
    """The mosquitto plugin, or None (with a warning) when its headers are missing."""
    mosq_inc = _find("MOSQUITTO_DIR", "include", ["mosquitto_broker.h"])
    if mosq_inc and not os.path.exists(os.path.join(mosq_inc, "mosquitto_plugin.h")):
        mosq_inc = None
    ssl_inc = _find("OPENSSL_DIR", "include", ["openssl/hmac.h"], OPENSSL_PC)
    crypto_lib = _find("OPENSSL_DIR", "lib", ["libcrypto.so", "libcrypto.dylib"], OPENSSL_PC)
    cjson_inc = _find("CJSON_DIR", "include", ["cjson/cJSON.h"], CJSON_PC)
    cjson_lib = _find("CJSON_DIR", "lib", ["libcjson.so", "libcjson.dylib"], CJSON_PC)
    missing = [what for what, found in (
        ("mosquitto plugin headers (mosquitto_broker.h, mosquitto_plugin.h: Debian mosquitto-dev)", mosq_inc),
        ("OpenSSL headers (openssl/hmac.h: Debian libssl-dev)", ssl_inc),
        ("OpenSSL libcrypto (Debian libssl-dev)", crypto_lib),
        ("cJSON (Debian libcjson-dev)", cjson_inc and cjson_lib),
    ) if not found]
    if missing:
        if _building():
            sys.stderr.write(
                "sermas_bus: WARNING: not building the mosquitto plugin behind sermas_bus.testing.LocalBus; "
                "missing: {}.\n  On Debian/Ubuntu: apt-get install mosquitto-dev libssl-dev libcjson-dev\n"
                .format("; ".join(missing)))
        return None
    extra_compile = ["-std=c11", "-Wall", "-Wextra"]
    if os.environ.get("SERMAS_BUS_DEBUG"):
        extra_compile += ["-O0", "-g"]
    return Extension(
        PLUGIN,
        sources=[os.path.join("plugin", "sermas_jwt_auth.c")],
        include_dirs=[d for d in {mosq_inc, ssl_inc, cjson_inc} if d],
        library_dirs=[d for d in {crypto_lib, cjson_lib} if d],
        libraries=["crypto", "cjson"],
        extra_compile_args=extra_compile,
        # a compiler error here must not stop the package build
        optional=True,
    )


class BuildExt(build_ext):
    """Names the plugin ``_sermas_jwt_auth.so``: it is loaded by mosquitto, not by
    Python, so it carries no Python ABI tag."""

    def get_ext_filename(self, fullname):
        # called with the full dotted name and, from get_ext_fullpath, the last part
        if fullname in (PLUGIN, PLUGIN.rsplit(".", 1)[1]):
            return os.path.join(*fullname.split(".")) + ".so"
        return super().get_ext_filename(fullname)


_plugin = _plugin_extension()
setup(ext_modules=[_extension()] + ([_plugin] if _plugin is not None else []),
      cmdclass={"build_ext": BuildExt})

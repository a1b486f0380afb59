"""Build the sermas_bus._core C extension against the system paho.mqtt.c and cJSON.

Metadata lives in pyproject.toml; this file only declares the extension and
finds the libraries:
  1. directories from PAHO_MQTT_C_DIR / CJSON_DIR (each with include/ and lib/),
  2. the compiler's default search paths (Debian: libpaho-mqtt-dev, libcjson-dev),
and stops with a message naming the packages to install when they are missing.

Knobs: SERMAS_BUS_DEBUG=1 (-O0 -g, asserts on), SERMAS_BUS_SANITIZE=1 (ASan/UBSan).
"""
import os
import sys
import sysconfig

from setuptools import Extension, setup

MISSING_HELP = (
    "sermas_bus: {what} not found.\n"
    "  On Debian/Ubuntu: apt-get install libpaho-mqtt-dev libcjson-dev\n"
    "  Elsewhere: install Eclipse paho.mqtt.c (>= 1.3.8, with TLS: paho-mqtt3cs) and cJSON,\n"
    "  or point PAHO_MQTT_C_DIR / CJSON_DIR at their install prefixes."
)


def _candidate_dirs(env, sub):
    dirs = []
    if os.environ.get(env):
        dirs.append(os.path.join(os.environ[env], sub))
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


def _find(env, sub, names):
    for d in _candidate_dirs(env, sub):
        for n in names:
            if os.path.exists(os.path.join(d, n)):
                return d
    return None


def _extension():
    paho_inc = _find("PAHO_MQTT_C_DIR", "include", ["MQTTClient.h"])
    paho_lib = _find("PAHO_MQTT_C_DIR", "lib", ["libpaho-mqtt3cs.so", "libpaho-mqtt3cs.dylib"])
    cjson_inc = _find("CJSON_DIR", "include", ["cjson/cJSON.h"])
    cjson_lib = _find("CJSON_DIR", "lib", ["libcjson.so", "libcjson.dylib"])
    building = any(a.startswith(("build", "bdist", "install", "develop", "editable")) for a in sys.argv[1:])
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
    extra_link = []
    undef = []
    if os.environ.get("SERMAS_BUS_DEBUG"):
        extra_compile += ["-O0", "-g"]
        undef.append("NDEBUG")
    if os.environ.get("SERMAS_BUS_SANITIZE"):
        extra_compile += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        extra_link += ["-fsanitize=address,undefined"]
    sources = sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".c"))
    return Extension(
        "sermas_bus._core",
        sources=sources,
        depends=[os.path.join("csrc", "sb.h")],
        include_dirs=[d for d in {paho_inc, cjson_inc} if d],
        library_dirs=[d for d in {paho_lib, cjson_lib} if d],
        libraries=["paho-mqtt3cs", "cjson", "pthread"],
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
        undef_macros=undef,
    )


setup(ext_modules=[_extension()])

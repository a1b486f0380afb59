"""Source lint for the C core's threading rules (in the spirit of msgspec's test_cpylint).

1. Every MQTTClient_* call that can block or take paho's global mutex sits
   inside a Py_BEGIN_ALLOW_THREADS ... Py_END_ALLOW_THREADS region.
2. Code that runs on paho's threads (callbacks.c, outbox.c) never touches Python.
3. No PyGILState_Ensure without a matching Release (we use none at all).
4. paho's reasonCode (an unsigned enum) is compared only as an int: gcc does
   not warn that ``resp.reasonCode < 0`` is always false, and that hid
   failed publishes and subscribes as successes.
"""
import pathlib
import re

import pytest

CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"
# calls that never take paho's mutex nor block: safe with the GIL held
NON_BLOCKING = {"MQTTClient_free", "MQTTClient_freeMessage", "MQTTClient_strerror",
                "MQTTClient_getVersionInfo", "MQTTClient_message", "MQTTClient_nameValue",
                "MQTTClient_deliveryToken", "MQTTClient_connectOptions", "MQTTClient_SSLOptions",
                "MQTTClient_willOptions", "MQTTClient_createOptions"}


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


@pytest.mark.parametrize("path", sorted(CSRC.glob("*.c")), ids=lambda p: p.name)
def test_paho_calls_release_the_gil(path):
    """A blocking paho call needs the GIL released: inside an ALLOW_THREADS
    block, or in a function named *_nogil whose every call site is."""
    depth = 0
    in_nogil_body = False
    problems = []
    for lineno, line in enumerate(_strip_comments(path.read_text()).splitlines(), 1):
        if re.match(r"^\w+_nogil\s*\(", line):          # definition (return type on the line above)
            in_nogil_body = True
        elif line.startswith("}"):
            in_nogil_body = False
        if "Py_BEGIN_ALLOW_THREADS" in line:
            depth += 1
        if "Py_END_ALLOW_THREADS" in line:
            depth -= 1
        calls = [n for n in re.findall(r"\b(MQTTClient_\w+)\s*\(", line) if n not in NON_BLOCKING]
        calls += [n for n in re.findall(r"\b(\w+_nogil)\s*\(", line) if not re.match(r"^\w+_nogil", line)]
        for name in calls:
            if depth <= 0 and not in_nogil_body:
                problems.append(f"{path.name}:{lineno}: {name}() called with the GIL held")
    assert depth == 0, f"{path.name}: unbalanced ALLOW_THREADS blocks"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ["callbacks.c", "outbox.c"])
def test_paho_thread_code_never_touches_python(name):
    text = _strip_comments((CSRC / name).read_text())
    forbidden = re.findall(r"\b(Py(?!Mem_Raw)\w+|_Py\w+)\s*\(", text)
    assert not forbidden, f"{name} calls Python APIs on paho's threads: {sorted(set(forbidden))}"


@pytest.mark.parametrize("path", sorted(CSRC.glob("*.c")), ids=lambda p: p.name)
def test_reason_codes_compared_as_int(path):
    """``x.reasonCode < 0`` on paho's unsigned enum is always false."""
    text = _strip_comments(path.read_text())
    pattern = r"(\(int\)\s*)?\b\w+(?:\.|->)reasonCode\s*(?:<|<=|>=|>)\s*-?\d"
    bad = [m.group(0) for m in re.finditer(pattern, text) if not m.group(1)]
    assert not bad, f"{path.name}: compare reasonCode as (int): {bad}"


def test_gilstate_pairs_balanced():
    for path in CSRC.glob("*.c"):
        text = _strip_comments(path.read_text())
        assert text.count("PyGILState_Ensure") == text.count("PyGILState_Release"), path.name


def test_setup_lists_every_core_source():
    """setup.py names the C sources explicitly: a new file must be added there."""
    import ast
    tree = ast.parse((CSRC.parent / "setup.py").read_text())
    listed = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "CORE_SOURCES" for t in node.targets))
    names = sorted(ast.literal_eval(listed))
    assert names == sorted(p.name for p in CSRC.glob("*.c"))

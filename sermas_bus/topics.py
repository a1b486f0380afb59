"""SERMAS topic names <-> MQTT topics, in C (``sermas_bus._core``).

The platform names its events ``"<resource>.<name>"`` (``"dialogue.messages"``,
``"ui.assetStatus"``, ``"platform.appChanged"``, ...) and maps each name to a
topic template such as ``app/:appId/dialogue/messages/:sessionId``; a level
starting with ``:`` is a parameter.  The table shipped in
``sermas_bus/data/topics.json`` (57 topics, resource -> name -> template) is
loaded into the module-level :data:`table` when this module is imported.

Rendering a topic to publish to fills every parameter from, in order (the
platform's order, sermas-api's ``MqttService.publish``, with explicit
parameters on top):

1. ``params`` (explicit values);
2. ``payload["record"]``: its ``<scope>Id`` (the scope is the template's 4th
   level: ``record.taskId`` for ``app/:appId/dialogue/task/:taskId``), its
   ``sessionId`` and its ``agentId``, when truthy: on the platform they
   override the top level;
3. the payload's top-level fields (``{"appId": ..., "sessionId": ...}``);
4. ``payload["task"]`` (the platform renders ``taskProgress`` from it), when truthy;
5. ``defaults`` (typically ``{"appId": ...}``).

Values are ``str`` or ``int`` (written in decimal).  In ``params`` and
``defaults`` anything else (``bool``, ``None``, ...) is a TypeError; payload
fields of other types are skipped, as the platform skips them.  A value that
is empty or contains ``/``, ``+``, ``#`` or NUL is a ValueError (an empty
``record``/``task`` field is skipped instead, as the platform skips falsy ones).

>>> render("dialogue.messages", {"appId": "app1", "sessionId": "s1"})
'app/app1/dialogue/messages/s1'
>>> render("dialogue.messages", payload={"appId": "app1", "sessionId": "s1", "text": "hi"})
'app/app1/dialogue/messages/s1'
>>> render("dialogue.taskChanged", payload={"record": {"taskId": "t7"}}, defaults={"appId": "app1"})
'app/app1/dialogue/task/changed/t7'

Subscribing: unfilled parameters become the wildcard ``+``; publishing: an
unfilled parameter is a ValueError naming it and the template.

>>> render("dialogue.messages", defaults={"appId": "app1"}, subscribe=True)
'app/app1/dialogue/messages/+'
>>> render("dialogue.messages", {"appId": "app1"})
Traceback (most recent call last):
  ...
ValueError: missing parameter 'sessionId' for dialogue.messages (app/:appId/dialogue/messages/:sessionId)

Incoming topics resolve to the most specific template: where two templates
differ first, a literal level beats a parameter, and a parameter that occurs
twice must hold the same value both times.

>>> match("app/app1/dialogue/tool/not-matching")
('dialogue.toolNotMatching', {'appId': 'app1'})
>>> match("app/app1/dialogue/tool/search")
('dialogue.toolTriggered', {'appId': 'app1', 'name': 'search'})
>>> match("app/app1/platform/app/changed/app2") is None
True

:class:`FilterTrie` maps MQTT subscription filters to values (callbacks, for
instance) and finds every filter matching a topic in time that depends on the
topic's depth, not on the number of filters:

>>> trie = FilterTrie()
>>> trie.add("app/+/dialogue/#", "dialogue handler")
>>> trie.add("$share/workers/app/app1/ui/+", "ui handler")
>>> trie.match("app/app1/ui/status")
['ui handler']

Thread safety: :class:`TopicTable` and :class:`FilterTrie` may be used from
any thread.  Each has a mutex that is held only while C code walks or changes
it, never while Python code runs (so a ``__del__`` or ``__eq__`` that uses
the object cannot deadlock or see it half-changed).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Dict, List, Mapping, Optional, Tuple

from . import _core

__all__ = [
    "TopicTable",
    "FilterTrie",
    "table",
    "render",
    "match",
    "names",
    "template",
    "params",
    "add",
    "add_table",
    "load_table",
]

FilterTrie = _core.FilterTrie


def load_table(path: Optional[str] = None) -> Dict[str, Dict[str, str]]:
    """The topic table as data: resource -> name -> template.

    Reads ``path``, or the table shipped with the package.

    >>> load_table()["dialogue"]["messages"]
    'app/:appId/dialogue/messages/:sessionId'
    """
    if path is None:
        text = resources.files(__package__).joinpath("data/topics.json").read_text("utf-8")
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    data = json.loads(text)
    _check_table_shape(data)
    return data


def _check_table_shape(data: Any) -> None:
    if not isinstance(data, Mapping):
        raise TypeError(f"a topic table maps resource -> name -> template, not {type(data).__name__}")
    for resource, entries in data.items():
        if not isinstance(entries, Mapping):
            raise TypeError(f"topic table resource {resource!r} must map name -> template, "
                            f"not {type(entries).__name__}")


def _flatten(data: Mapping[str, Mapping[str, str]]) -> List[Tuple[str, str]]:
    _check_table_shape(data)
    return [(f"{resource}.{name}", tpl) for resource, entries in data.items()
            for name, tpl in entries.items()]


class TopicTable(_core.TopicTable):
    """Topic templates by name (C core), plus loading helpers.

    ``render(name, params=None, payload=None, *, defaults=None, subscribe=False)``
    and ``match(topic)`` are the C methods; see the module documentation for
    the rules.

    >>> t = TopicTable.from_dict({"robot": {"moved": "app/:appId/robot/moved/:robotId"}})
    >>> t.render("robot.moved", {"appId": "a", "robotId": 7})
    'app/a/robot/moved/7'
    >>> t.match("app/a/robot/moved/7")
    ('robot.moved', {'appId': 'a', 'robotId': '7'})
    >>> t.params("robot.moved")
    ('appId', 'robotId')
    """

    __slots__ = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, str]]) -> "TopicTable":
        """A new table holding ``data`` (resource -> name -> template)."""
        t = cls()
        t.add_table(data)
        return t

    def add_table(self, data: Mapping[str, Mapping[str, str]]) -> None:
        """Add (or replace) every ``"<resource>.<name>"`` of ``data``.

        All templates are checked first: if one is invalid, ValueError is
        raised and the table is left unchanged.
        """
        entries = _flatten(data)
        scratch = _core.TopicTable()
        for name, tpl in entries:
            scratch.add(name, tpl)
        for name, tpl in entries:
            self.add(name, tpl)

    def __iter__(self):
        return iter(self.names())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} with {len(self)} topics>"


table: TopicTable = TopicTable.from_dict(load_table())
"""The default table: the platform's topics, plus whatever :func:`add` adds."""


def render(name: str, params: Optional[Mapping[str, Any]] = None,
           payload: Optional[Mapping[str, Any]] = None, *,
           defaults: Optional[Mapping[str, Any]] = None, subscribe: bool = False) -> str:
    """The MQTT topic for a topic name of the default table.

    ``name`` may also be a template or a plain topic (anything containing
    ``/`` that is not a name): ``render("app/:appId/custom/:id", ...)``.
    When subscribing, such a string may contain whole-level wildcards.

    >>> render("session.agentChanged", payload={"appId": "a", "record": {"agentId": "ag1"}})
    'app/a/session/agent/changed/ag1'
    >>> render("app/:appId/custom/#", defaults={"appId": "a"}, subscribe=True)
    'app/a/custom/#'
    >>> render("dialogue.messages", {"appId": "a", "sessionId": "x/y"})
    Traceback (most recent call last):
      ...
    ValueError: invalid value 'x/y' for parameter 'sessionId' of dialogue.messages (app/:appId/dialogue/messages/:sessionId) (from params): it contains '/'
    """
    if params is not None and type(params) is not dict:
        params = dict(params)
    if payload is not None and type(payload) is not dict:
        if not isinstance(payload, Mapping):
            raise TypeError(f"payload must be a mapping (the decoded JSON event) or None, "
                            f"not {type(payload).__name__}")
        payload = dict(payload)
    if defaults is not None and type(defaults) is not dict:
        defaults = dict(defaults)
    return table.render(name, params, payload, defaults, subscribe)


def match(topic: "str | bytes") -> Optional[Tuple[str, Dict[str, str]]]:
    """``(name, params)`` of the most specific template matching ``topic``, or None.

    >>> match("app/a/dialogue/user-speech/stream/s1/c3")
    ('dialogue.userSpeechStream', {'appId': 'a', 'sessionId': 's1', 'chunkId': 'c3'})
    >>> match(b"app/a/dialogue/task/handler")
    ('dialogue.taskFieldHandler', {'appId': 'a'})
    >>> match("app/a/unknown/thing") is None
    True
    """
    return table.match(topic)


def names() -> List[str]:
    """Every topic name of the default table, in the order first added.

    >>> names()[:3]
    ['ui.assetStatus', 'ui.interaction', 'ui.content']
    """
    return table.names()


def template(name: str) -> str:
    """The template of a name; KeyError if unknown.

    >>> template("platform.appChanged")
    'app/:appId/platform/app/changed/:appId'
    """
    return table.template(name)


def params(name: str) -> Tuple[str, ...]:
    """The distinct parameters of a name's template.

    >>> params("dialogue.agentSpeech")
    ('appId', 'sessionId', 'messageId', 'chunkId')
    """
    return table.params(name)


def add(name: str, template: str) -> None:
    """Add (or replace) a topic in the default table, as the platform does per app.

    >>> add("myapp.event", "app/:appId/myapp/event/:eventId")
    >>> match("app/a/myapp/event/e1")
    ('myapp.event', {'appId': 'a', 'eventId': 'e1'})
    """
    table.add(name, template)


def add_table(data: Mapping[str, Mapping[str, str]]) -> None:
    """Add every topic of ``data`` (resource -> name -> template, like topics.json).

    Nothing is added if one template is invalid.
    """
    table.add_table(data)

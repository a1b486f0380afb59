"""Topic discovery: the platform's own table, merged into ours.

The platform's table is not fixed: modules add topics at runtime and older
releases differ (up to v1.0.34 ``dialogue.agentSpeech`` had no
``:messageId``).  sermas-api publishes what it knows:

* ``GET /api/platorm/topics`` (sic; public): ``{"resources": {resource: [scope, ...]}}``;
* ``GET /api/platform/app/<appId>/client/<clientId>/topics`` (Bearer): the
  templates the client's permissions allow (``PlatformClientService.listTopics``).

``merge`` folds the templates into ``sermas_bus.topics.table``: a template we
have already is nothing new; one whose ``<resource>/<scope>`` matches exactly
one of ours with another shape replaces it (the platform's release wins for
that platform); one we have nothing for is added as ``<resource>.<scope>``;
one that several of ours share a ``<resource>/<scope>`` with is left out
(reported as ambiguous).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from . import topics as _topics
from .auth import AuthBadAnswer, get_json


def _resource_scope(template: str) -> Optional[Tuple[str, str]]:
    levels = template.split("/")
    if len(levels) < 4 or levels[0] not in ("app", "user"):
        return None
    return levels[2], levels[3]


def fetch(base_url: str, app_id: str, client_id: Optional[str], token: Optional[str],
          timeout: float = 10.0) -> Tuple[Dict[str, List[str]], List[str]]:
    """The platform's resource tree and (with a client and a token) its
    templates; AuthError subclasses when it cannot be read."""
    url = f"{base_url}/api/platorm/topics"
    answer = get_json(url, timeout=timeout)
    resources = answer.get("resources") if isinstance(answer, dict) else None
    if not isinstance(resources, dict) or not all(isinstance(v, list) for v in resources.values()):
        raise AuthBadAnswer(f"GET {url} did not answer {{\"resources\": {{resource: [scope, ...]}}}}")
    templates: List[str] = []
    if client_id and token:
        url = f"{base_url}/api/platform/app/{app_id}/client/{client_id}/topics"
        listed = get_json(url, bearer=token, timeout=timeout)
        if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
            raise AuthBadAnswer(f"GET {url} did not answer a list of topic templates")
        templates = listed
    return resources, templates


def merge(templates: List[str]) -> Dict[str, Any]:
    """Fold the platform's templates into the default table; what changed."""
    ours: Dict[Tuple[str, str], List[Tuple[str, str]]] = {}
    known = set()
    for name in _topics.names():
        template = _topics.template(name)
        known.add(template)
        rs = _resource_scope(template)
        if rs is not None:
            ours.setdefault(rs, []).append((name, template))
    added: Dict[str, str] = {}
    changed: Dict[str, Tuple[str, str]] = {}
    ambiguous: List[str] = []
    for template in templates:
        rs = _resource_scope(template)
        if template in known or rs is None:
            continue
        candidates = ours.get(rs, [])
        if len(candidates) == 1:
            name, old = candidates[0]
            _topics.add(name, template)
            changed[name] = (old, template)
        elif len(candidates) > 1:
            ambiguous.append(template)    # several of ours share its resource/scope: keep ours
        else:
            name = f"{rs[0]}.{rs[1]}"
            n = 2
            while name in added or name in _topics.names():
                name, n = f"{rs[0]}.{rs[1]}{n}", n + 1
            _topics.add(name, template)
            added[name] = template
        known.add(template)
    return {"added": added, "changed": changed, "ambiguous": ambiguous}

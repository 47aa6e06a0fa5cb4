"""Which Ed-Fi resource a Singer stream writes to.

A stream maps to a resource by ``resource_map`` (stream -> ``namespace/resource``) or by its name, in any of
the forms taps produce:

* ``studentSchoolAssociations``, ``student_school_associations``, ``StudentSchoolAssociations`` (ed-fi);
* ``ed-fi/studentSchoolAssociations`` or ``/ed-fi/studentSchoolAssociations``;
* tap-edfi's ``<namespace>_<resource>`` for other namespaces (``tpdm_candidates``);
* SQL taps' ``<schema>-<table>`` (``public-student_school_associations``): the text after the last ``-``.

tap-edfi's change streams are recognised by their suffix: ``<stream>_deletes`` carries deletes
(``{id, changeVersion, keyValues}``) and ``<stream>_key_changes`` key changes (``{id, changeVersion,
oldKeyValues, newKeyValues}``) of the resource ``<stream>`` maps to.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from edfi_core.openapi import ApiModel, Resource

logger = logging.getLogger(__name__)

#: What a stream carries.
ITEMS, DELETES, KEY_CHANGES = "items", "deletes", "key_changes"
_SUFFIXES = ((KEY_CHANGES, "_key_changes"), (DELETES, "_deletes"))


@dataclass(frozen=True)
class Route:
    """Where the records of one stream go."""

    stream: str  # the Singer stream name
    resource: Resource
    kind: str  # items | deletes | key_changes
    base_stream: str  # the items stream a change stream belongs to (the stream itself for items)
    how: str  # how the match was made, for logs

    def __repr__(self) -> str:
        return f"Route({self.stream!r} -> {self.resource.path}, {self.kind})"


def normalize(name: str) -> str:
    """Lower case, without separators: ``student_school-Associations`` -> ``studentschoolassociations``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


class StreamMapper:
    """Resolves stream names to resources of one :class:`ApiModel`."""

    def __init__(self, model: ApiModel, resource_map: Mapping[str, str] | None = None) -> None:
        self.model = model
        self.resource_map = {str(k): str(v) for k, v in (resource_map or {}).items()}
        self._index: dict[str, list[Resource]] = {}
        for res in model:
            keys = {normalize(res.namespace + res.name), normalize(res.path)}
            if res.namespace == "ed-fi":
                keys.add(normalize(res.name))
            for key in keys:
                self._index.setdefault(key, []).append(res)
        # a bare name of another namespace (``candidates``) when no ed-fi resource has it
        for res in model:
            key = normalize(res.name)
            if key not in self._index:
                self._index[key] = [res]
            elif res not in self._index[key] and all(r.namespace != "ed-fi" for r in self._index[key]):
                self._index[key].append(res)
        self._cache: dict[str, Route | None] = {}

    def resource_for(self, spec: str) -> Resource | None:
        """A resource named the way users write it: ``ed-fi/students``, ``/tpdm/candidates``, ``students``."""
        spec = spec.strip()
        if spec.count("/") >= 1:
            path = "/" + spec.strip("/")
            res = self.model.get(path)
            if res is not None:
                return res
            # case-insensitive path match
            low = path.lower()
            for candidate in self.model:
                if candidate.path.lower() == low:
                    return candidate
            return None
        hits = self._index.get(normalize(spec)) or []
        if len(hits) > 1:
            logger.warning("%r matches %s; using %s (set resource_map to choose)", spec,
                           ", ".join(r.path for r in hits), hits[0].path)
        return hits[0] if hits else None

    def route(self, stream: str) -> Route | None:
        if stream not in self._cache:
            self._cache[stream] = self._route(stream)
        return self._cache[stream]

    def _route(self, stream: str) -> Route | None:
        mapped = self.resource_map.get(stream)
        if mapped is not None:
            res = self.resource_for(mapped)
            if res is None:
                logger.error("resource_map maps stream %r to %r, which the API does not have", stream, mapped)
                return None
            return Route(stream, res, ITEMS, stream, "resource_map")
        res = self._by_name(stream)
        if res is not None:
            return Route(stream, res, ITEMS, stream, "name")
        for kind, suffix in _SUFFIXES:
            if stream.endswith(suffix) and len(stream) > len(suffix):
                base = stream[: -len(suffix)]
                base_route = self.route(base)
                if base_route is not None and base_route.kind == ITEMS:
                    return Route(stream, base_route.resource, kind, base, f"{suffix[1:]} of {base}")
        return None

    def _by_name(self, stream: str) -> Resource | None:
        candidates = [stream]
        if "-" in stream and not stream.startswith(("ed-fi/", "/ed-fi/")):
            candidates.append(stream.rsplit("-", 1)[-1])  # SQL taps: <schema>-<table>
        if "." in stream:
            candidates.append(stream.rsplit(".", 1)[-1])
        for name in candidates:
            res = self.resource_for(name)
            if res is not None:
                return res
        return None


__all__ = ["DELETES", "ITEMS", "KEY_CHANGES", "Route", "StreamMapper", "normalize"]

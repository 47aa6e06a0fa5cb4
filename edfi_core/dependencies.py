"""Dependency order of Ed-Fi resources.

Computed from the references in the OpenAPI model the way the ODS/API computes
``/metadata/data/v3/dependencies``, or read from that endpoint (JSON or GraphML). From DS 4.0 on the
API lists person resources twice: a ``Create`` entry early and an ``Update`` entry after the
association that authorizes writes about that person (``students#Retry`` after
``studentSchoolAssociations``); every other resource that references the person waits for the
second one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from edfi_core.openapi import ApiModel

logger = logging.getLogger(__name__)

#: Associations that authorize writes about a person (the person's "#Retry" prerequisites).
AUTHORIZING_ASSOCIATIONS: dict[str, tuple[str, ...]] = {
    "/ed-fi/students": ("/ed-fi/studentSchoolAssociations",),
    "/ed-fi/staffs": (
        "/ed-fi/staffEducationOrganizationAssignmentAssociations",
        "/ed-fi/staffEducationOrganizationEmploymentAssociations",
    ),
    "/ed-fi/parents": ("/ed-fi/studentParentAssociations",),
    "/ed-fi/contacts": ("/ed-fi/studentContactAssociations",),
}
RETRY = "#Retry"


@dataclass(frozen=True)
class DependencyItem:
    resource: str  # "/ed-fi/students" (never with #Retry)
    order: int
    operations: tuple[str, ...]

    def as_json(self) -> dict:
        return {"resource": self.resource, "order": self.order, "operations": list(self.operations)}


def dependency_graph(model: ApiModel, person_retry: bool = True) -> dict[str, set[str]]:
    """Node -> the nodes it depends on. Nodes are resource paths, plus ``path#Retry`` nodes."""
    graph: dict[str, set[str]] = {res.path: set() for res in model}
    for res in model:
        for ref in res.references:
            for target in model.reference_targets(ref):
                if target.path != res.path:
                    graph[res.path].add(target.path)
        for dpath in res.descriptor_paths:
            desc = model.descriptor_for(dpath[-1])
            if desc is not None and desc.path != res.path:
                graph[res.path].add(desc.path)
    for person, auths in AUTHORIZING_ASSOCIATIONS.items():
        present = [a for a in auths if a in graph]
        if person not in graph or not present:
            continue
        # writes about a person wait for the association that authorizes them: through a
        # "#Retry" node from DS 4.0 on, directly on the association before (ODS/API 5.x)
        retry = person + RETRY
        dependents = [n for n, deps in graph.items() if person in deps and n not in auths]
        if person_retry:
            graph[retry] = set(present)
        for node in dependents:
            graph[node].update([retry] if person_retry else present)
    return graph


def levels(graph: dict[str, set[str]]) -> dict[str, int]:
    """Order of each node: 1 for nodes with no prerequisites, else 1 + the highest prerequisite.

    A cycle (abstract references such as ``educationOrganizationReference`` can make one between
    two members of the abstract entity) is broken at the edge that closes it, with a debug log.
    """
    level: dict[str, int] = {}
    visiting: set[str] = set()

    def visit(node: str, trail: list[str]) -> int:
        if node in level:
            return level[node]
        if node in visiting:
            cycle = [*trail[trail.index(node):], node]
            logger.debug("dependency cycle broken: %s", " -> ".join(cycle))
            return 0
        visiting.add(node)
        trail.append(node)
        # sorted: a cycle is broken at the same edge in every process, whatever the hash seed
        deps = [d for d in sorted(graph.get(node, ())) if d in graph]
        value = 1 + max((visit(d, trail) for d in deps), default=0)
        trail.pop()
        visiting.discard(node)
        level[node] = value
        return value

    for node in sorted(graph):
        visit(node, [])
    return level


def dependency_items(model: ApiModel, person_retry: bool = True) -> list[DependencyItem]:
    """What ``/metadata/data/v3/dependencies`` returns for this model, sorted like the real one."""
    graph = dependency_graph(model, person_retry)
    lv = levels(graph)
    items: list[DependencyItem] = []
    for node, order in lv.items():
        if node.endswith(RETRY):
            items.append(DependencyItem(node[: -len(RETRY)], order, ("Update",)))
        elif person_retry and node + RETRY in graph:
            items.append(DependencyItem(node, order, ("Create",)))
        else:
            ops = ("Create", "Update") if person_retry else ("Create",)
            items.append(DependencyItem(node, order, ops))
    items.sort(key=lambda i: (i.order, i.resource.lower()))
    return items


def graphml(graph: dict[str, set[str]]) -> str:
    """The dependency graph as the GraphML document the API serves (edges prerequisite -> node)."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
        'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">',
        '<graph id="EdFi Dependencies" edgedefault="directed">',
    ]
    for node in sorted(graph, key=str.lower):
        lines.append(f"<node id={quoteattr(node)}/>")
    for node in sorted(graph, key=str.lower):
        for dep in sorted(graph[node], key=str.lower):
            lines.append(f"<edge source={quoteattr(dep)} target={quoteattr(node)}/>")
    lines += ["</graph>", "</graphml>"]
    return "\n".join(lines) + "\n"


# -- reading what a server publishes --------------------------------------------------------------
def parse_dependencies_json(items: Iterable[dict]) -> list[DependencyItem]:
    return [
        DependencyItem(i["resource"], int(i["order"]), tuple(i.get("operations") or ("Create",)))
        for i in items
    ]


_EDGE = re.compile(r'<edge[^>]*\bsource="([^"]+)"[^>]*\btarget="([^"]+)"')


def parse_graphml_edges(text: str) -> list[tuple[str, str]]:
    """(prerequisite, dependent) pairs of a dependencies GraphML document."""
    return _EDGE.findall(text)


def load_order(items: Iterable[DependencyItem]) -> dict[str, int]:
    """Resource -> the order to write it in: person resources de-duplicated to their Create entry."""
    order: dict[str, int] = {}
    for item in items:
        if "Create" in item.operations or item.resource not in order:
            current = order.get(item.resource)
            if current is None or ("Create" in item.operations and item.order < current):
                order[item.resource] = item.order
    return order


def order_groups(order: dict[str, int]) -> list[list[str]]:
    """Resources grouped by order, lowest first; resources in one group do not depend on each other."""
    groups: dict[int, list[str]] = {}
    for res, o in order.items():
        groups.setdefault(o, []).append(res)
    return [sorted(groups[o]) for o in sorted(groups)]

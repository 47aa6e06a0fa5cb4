"""A deterministic synthetic district for any Ed-Fi model (the real DS 4.0, 5.0 and 6.0 documents).

:func:`plan_model` walks the resources of an :class:`~edfi_core.openapi.ApiModel` in dependency order
(:mod:`edfi_core.dependencies`) and generates payloads from each resource's schema: references point
to items generated before (abstract ``educationOrganizationReference``\\ s to concrete education
organizations), descriptor properties hold values of the generated descriptors, and fields that several
references of one item share (``schoolId`` of a section's course offering and of its class periods) hold
one value, as the ODS/API's unified key columns do. Sizes follow the number of students: roots (students,
staff, contacts, schools) are sized by it and every other resource gets about one item per item of its
largest identifying parent (three per student for attendance events).

Optional references that cannot be satisfied (their target comes later in the order because the
reference would close a dependency cycle, or no target agrees with the fields already chosen) are left
out; a resource whose required references cannot be satisfied is left empty and reported in
:attr:`GenericPlan.left_out`. Everything is drawn from ``random.Random`` seeded per resource, so the same
seed gives the same data (and the store derives ids from the natural key: the same ids). See
docs/seeding.md.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from edfi_core.dependencies import dependency_graph, levels
from edfi_core.openapi import SERVER_FIELDS, ApiModel, Reference, Resource
from edfi_sandbox.builtin_model import DESCRIPTOR_VALUES
from edfi_sandbox.seed import FIRST_NAMES, LAST_NAMES, SCHOOL_YEAR, SCHOOL_YEARS, BulkStore

logger = logging.getLogger(__name__)

JSON = dict[str, Any]

#: items of a root resource (no identifying reference) per student, and at least how many
ROOT_SIZES: dict[str, tuple[float, int]] = {
    "students": (1.0, 1),
    "staffs": (0.1, 3),
    "parents": (1.0, 1),
    "contacts": (1.0, 1),
    "schools": (1 / 500, 1),
    "localEducationAgencies": (0.0, 1),
    "stateEducationAgencies": (0.0, 1),
    "educationServiceCenters": (0.0, 1),
}
ROOT_DEFAULT = (0.0, 3)
#: children per item of the largest identifying parent
FAN_OUT: dict[str, int] = {"studentSchoolAttendanceEvents": 3, "studentSectionAttendanceEvents": 3}
MIN_ITEMS = 3  # a dependent resource has at least this many items (when its keys allow)
DESCRIPTOR_CODES = 4  # code values of a descriptor the built-in model has no real values for
TRIES = 4  # attempts at one item (a natural key already taken, a required reference unsatisfiable)
#: edorg id ranges: every concrete education organization gets its own (ids are unique across them)
EDORG_BASE = 255900
FALL_START = date(2024, 8, 19)
SPRING_END = date(2025, 5, 30)
SKIP = frozenset({*SERVER_FIELDS, "_ext"})


@dataclass
class GenericPlan:
    """What :func:`plan_model` decided: the load order, each resource's payloads, what was left out and why."""

    order: list[str]
    docs: dict[str, list[JSON]]
    left_out: dict[str, str] = field(default_factory=dict)
    #: references that were left out of some items (resource path -> reference property -> reason)
    dropped_references: dict[str, dict[str, str]] = field(default_factory=dict)

    def loads(self, copies: bool = True) -> list[tuple[str, Callable[[], Iterator[JSON]]]]:
        """(resource path, payload generator) in load order. The store adds links to what it loads: without
        ``copies`` it gets the plan's own payloads (faster, for a plan used once)."""
        return [(path, _replay(self.docs[path], copies)) for path in self.order if self.docs.get(path)]


def _replay(docs: list[JSON], copies: bool) -> Callable[[], Iterator[JSON]]:
    def gen() -> Iterator[JSON]:
        for doc in docs:
            yield copy.deepcopy(doc) if copies else doc

    return gen


def _cap(name: str) -> str:
    return name[0].upper() + name[1:]


class _Pool:
    """The natural keys of one resource's generated items, with lookups by some of their fields."""

    def __init__(self) -> None:
        self.keys: list[JSON] = []
        self._index: dict[tuple[str, ...], dict[tuple, list[JSON]]] = {}

    def add(self, key: JSON) -> None:
        self.keys.append(key)
        for names, index in self._index.items():
            index.setdefault(tuple(key.get(n) for n in names), []).append(key)

    def matching(self, names: tuple[str, ...], values: tuple) -> list[JSON]:
        if not names:
            return self.keys
        index = self._index.get(names)
        if index is None:
            index = self._index[names] = {}
            for key in self.keys:
                index.setdefault(tuple(key.get(n) for n in names), []).append(key)
        return index.get(values, [])


class GenericDistrict:
    """Payloads for every resource of ``model`` that can be generated, for ``students`` students."""

    def __init__(self, model: ApiModel, students: int, seed: int = 0) -> None:
        if students < 1:
            raise ValueError("a district needs at least one student")
        self.model = model
        self.students = students
        self.seed = seed
        self.pools: dict[str, _Pool] = {res.path: _Pool() for res in model}
        self.descriptor_values: dict[str, list[str]] = {}
        graph = dependency_graph(model, person_retry=False)
        # prerequisites in a fixed order: where a cycle is broken depends on the order levels() visits them, and a
        # set's order changes from one process to the next (string hashing is randomized)
        lv = levels({node: sorted(deps) for node, deps in sorted(graph.items())})  # type: ignore[arg-type]
        self.order = sorted((r.path for r in model), key=lambda p: (lv[p], p))
        self.position = {p: n for n, p in enumerate(self.order)}
        self.edorg_members = {t.path for t in model.abstract_members("edFi_educationOrganization")}
        self._edorg_next = EDORG_BASE
        self.plan = GenericPlan(self.order, {})
        self._targets: dict[int, list[Resource]] = {}  # by id(): the model's references live as long as it

    # -- the whole district ----------------------------------------------------------------------
    def build(self) -> GenericPlan:
        for path in self.order:
            res = self.model.resources[path]
            rng = random.Random(f"{self.seed}:{path}")
            docs = self._resource_docs(res, rng)
            self.plan.docs[path] = docs
            if not docs and path not in self.plan.left_out:
                self.plan.left_out[path] = "no item could be generated"
        return self.plan

    def _resource_docs(self, res: Resource, rng: random.Random) -> list[JSON]:
        if res.is_descriptor:
            return self._descriptor_docs(res, rng)
        if res.path.endswith("/schoolYearTypes"):
            docs = [{"schoolYear": y, "currentSchoolYear": y == SCHOOL_YEAR, "schoolYearDescription": f"{y - 1}-{y}"}
                    for y in SCHOOL_YEARS]
            for d in docs:
                self.pools[res.path].add(res.natural_key(d))
            return docs
        refs = {r.path: r for r in res.references}
        ident = [r for r in res.references if r.identity and r.top_level]
        required = [r for r in ident if not self._satisfiable(res, r)]
        if required:
            self.plan.left_out[res.path] = "its identifying " + ", ".join(r.prop for r in required) + (
                " has no items to point to (its target was left out, or comes later in a dependency cycle)")
            return []
        primary = self._primary(ident)
        if primary is None:
            share, least = ROOT_SIZES.get(res.name, ROOT_DEFAULT)
            count = max(least, math.ceil(self.students * share))
            parents: list[JSON | None] = [None] * count
        else:
            pool = self._candidates(primary, {}, res)
            if not pool:
                self.plan.left_out[res.path] = "its identifying " + _why(self, res, self.targets(primary), primary)
                return []
            fan = FAN_OUT.get(res.name, 1)
            parents = [k for k in pool for _ in range(fan)]
            while pool and len(parents) < MIN_ITEMS:
                parents += pool
        seen: set[tuple] = set()
        docs: list[JSON] = []
        pool = self.pools[res.path]
        reasons: dict[str, str] = {}
        for n, parent in enumerate(parents):
            for _ in range(TRIES):
                gen = _Item(self, res, refs, rng, n, reasons)
                doc = gen.document(primary, parent)
                if doc is None:
                    continue
                key = res.natural_key(doc)
                kt = tuple(repr(v) for v in key.values())
                if kt in seen:
                    continue
                seen.add(kt)
                docs.append(doc)
                pool.add(key)
                break
        if reasons:
            self.plan.dropped_references[res.path] = reasons
        if not docs:
            first = next(iter(reasons.values()), "every attempt gave a natural key already taken")
            self.plan.left_out[res.path] = first
        return docs

    def _descriptor_docs(self, res: Resource, rng: random.Random) -> list[JSON]:
        namespace = "uri://ed-fi.org/" + _cap(res.entity)
        codes = list(DESCRIPTOR_VALUES.get(res.path, ())) or [
            f"{_words(res.entity[: -len('Descriptor')])} {k + 1}" for k in range(DESCRIPTOR_CODES)]
        docs = []
        for n, code in enumerate(codes):
            gen = _Item(self, res, {r.path: r for r in res.references}, rng, n, {})
            doc = gen.document(None, None, fixed={"namespace": namespace, "codeValue": code,
                                                  "shortDescription": code[:75], "description": code})
            if doc is not None:
                docs.append(doc)
                self.pools[res.path].add(res.natural_key(doc))
        self.descriptor_values[res.path] = [f"{d['namespace']}#{d['codeValue']}" for d in docs]
        return docs

    # -- references ------------------------------------------------------------------------------
    def targets(self, ref: Reference) -> list[Resource]:
        hit = self._targets.get(id(ref))
        if hit is None:
            hit = self._targets[id(ref)] = self.model.reference_targets(ref)
        return hit

    def _satisfiable(self, res: Resource, ref: Reference) -> bool:
        targets = self.targets(ref)
        if not targets:
            return True  # a reference to a resource the model lacks: values are made up
        return any(t.path != res.path and self.pools[t.path].keys for t in targets)

    def _primary(self, ident: list[Reference]) -> Reference | None:
        best, size = None, 0
        for ref in ident:
            targets = self.targets(ref)
            if not targets or any(t.path.endswith("/schoolYearTypes") for t in targets):
                continue
            n = sum(len(self.pools[t.path].keys) for t in targets)
            if n > size:
                best, size = ref, n
        return best

    def _candidates(self, ref: Reference, bound: JSON, res: Resource) -> list[JSON]:
        """Reference values (named as in the reference) that agree with the fields already chosen."""
        out: list[JSON] = []
        for target in self.targets(ref):
            if target.path == res.path:
                continue  # a reference to the resource itself: left out (it would close a cycle)
            pool = self.pools[target.path]
            if target.schema_name != ref.target_schema:  # abstract: one id, named after the abstract entity
                if len(ref.fields) != 1 or len(target.key_fields) != 1:
                    continue
                name, tname = ref.fields[0], target.key_fields[0]
                keys = pool.matching((tname,), (bound[name],)) if name in bound else pool.keys
                out.extend({name: k[tname]} for k in keys)
                continue
            if set(ref.fields) != set(target.key_fields):
                continue  # the model's key of the target lacks fields the reference has: see _why
            names = tuple(f for f in ref.fields if f in bound)
            out.extend(pool.matching(names, tuple(bound[f] for f in names)))
        return out

    def next_edorg_id(self) -> int:
        self._edorg_next += 1
        return self._edorg_next


class _Item:
    """One payload of one resource, built by walking its schema."""

    def __init__(self, district: GenericDistrict, res: Resource, refs: dict[tuple[str, ...], Reference],
                 rng: random.Random, n: int, reasons: dict[str, str]) -> None:
        self.d = district
        self.res = res
        self.refs = refs
        self.rng = rng
        self.n = n
        self.reasons = reasons
        self.ident = set(res.identity)

    def _ref_at(self, path: tuple[str, ...], prop: str) -> Reference:
        key = (*path, prop)
        return self.refs[key]

    def document(self, primary: Reference | None, parent: JSON | None, fixed: JSON | None = None) -> JSON | None:
        bound: JSON = dict(fixed or {})
        if primary is not None and parent is not None:
            bound.update(parent)
        try:
            return self._object(self.res.schema, (), bound, top=True, primary=primary, parent=parent)
        except _Unsatisfiable as exc:
            self.reasons.setdefault(exc.prop, exc.reason)
            return None

    # -- objects ---------------------------------------------------------------------------------
    def _object(self, schema: JSON, path: tuple[str, ...], bound: JSON, *, top: bool = False,
                primary: Reference | None = None, parent: JSON | None = None) -> JSON:
        props: JSON = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        out: JSON = {}
        # references first, the most constrained (identity, required, most fields) first
        ref_props = [p for p in props if (*path, p) in self.refs]
        ref_props.sort(key=lambda p: (
            not (top and primary is not None and (p,) == primary.path),
            not (top and p in self.ident), p not in required, -len(self._ref_at(path, p).fields), p))
        for prop in ref_props:
            ref = self._ref_at(path, prop)
            if top and primary is not None and ref is primary and parent is not None:
                out[prop] = {f: parent[f] for f in ref.fields}
                continue
            must = prop in required
            if not must and self.rng.random() < 0.4:
                continue
            value = self._reference(ref, bound, must)
            if value is not None:
                out[prop] = value
                bound.update(value)
        for prop, spec in props.items():
            if prop in SKIP or prop in out or (*path, prop) in self.refs or not isinstance(spec, dict):
                continue
            must = prop in required or (top and prop in self.ident)
            kind = spec.get("type")
            if kind == "array":
                items = spec.get("items") or {}
                if not must and self.rng.random() < 0.6:
                    continue
                value = self._array(prop, items, (*path, prop, "[]"), bound, must)
                if value:
                    out[prop] = value
                elif must:
                    raise _Unsatisfiable(prop, f"required collection {prop} could not be filled")
                continue
            if kind == "object" or "properties" in spec:
                if not must and self.rng.random() < 0.6:
                    continue
                try:
                    out[prop] = self._object(spec, (*path, prop), dict(bound))
                except _Unsatisfiable:
                    if must:
                        raise
                continue
            if not must and self.rng.random() < 0.5:
                continue
            if prop in bound and _fits(spec, bound[prop]):
                out[prop] = bound[prop]
                continue
            value = self._scalar(prop, spec, top and prop in self.ident)
            if value is None:
                if must:
                    raise _Unsatisfiable(prop, f"no {self.d.model.descriptor_for(prop) or prop} values")
                continue
            out[prop] = value
            bound[prop] = value
        return out

    def _array(self, prop: str, items: JSON, path: tuple[str, ...], bound: JSON, must: bool) -> list[JSON]:
        if items.get("type") != "object" and "properties" not in items:
            return []
        count = 1 if must else 1 + (self.rng.random() < 0.3)
        idents = [p for p, s in (items.get("properties") or {}).items()
                  if isinstance(s, dict) and s.get("x-Ed-Fi-isIdentity")]
        out, seen = [], set()
        for _ in range(count + 1):
            try:
                item = self._object(items, path, dict(bound))
            except _Unsatisfiable:
                continue
            sig = repr([item.get(p) for p in idents] if idents else item)
            if item and sig not in seen:
                seen.add(sig)
                out.append(item)
            if len(out) >= count:
                break
        return out

    def _reference(self, ref: Reference, bound: JSON, must: bool) -> JSON | None:
        targets = self.d.targets(ref)
        if not targets:  # the document has no such resource (DS 4.0's schoolYearTypes): made-up values
            value = {}
            for f in ref.fields:
                value[f] = bound.get(f, SCHOOL_YEAR if f.endswith("Year") else f"{_words(f)} {self.n + 1}")
            return value
        candidates = self.d._candidates(ref, bound, self.res)
        if not candidates:
            reason = _why(self.d, self.res, targets, ref)
            if must:
                raise _Unsatisfiable(ref.prop, reason)
            self.reasons.setdefault(ref.prop, reason)
            return None
        if any(t.path.endswith("/schoolYearTypes") for t in targets):
            current = [c for c in candidates if SCHOOL_YEAR in c.values()]
            candidates = current or candidates
        pick = candidates[self.rng.randrange(len(candidates))]
        return {f: pick[f] for f in ref.fields}

    # -- scalars ---------------------------------------------------------------------------------
    def _scalar(self, prop: str, spec: JSON, identity: bool) -> Any:
        rng, n = self.rng, self.n
        kind, fmt = spec.get("type"), spec.get("format")
        low = prop.lower()
        if kind == "string" and prop.endswith("Descriptor"):
            desc = self.d.model.descriptor_for(prop)
            values = self.d.descriptor_values.get(desc.path, []) if desc else []
            return values[rng.randrange(len(values))] if values else None
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "integer":
            if identity and self.res.path in self.d.edorg_members and len(self.res.key_fields) == 1:
                return self.d.next_edorg_id()
            lo = int(spec.get("minimum", 0 if "year" not in low else SCHOOL_YEAR))
            hi = int(spec.get("maximum", lo + (0 if "year" in low else 100)))
            if identity:
                return min(hi, lo + 1 + n) if "maximum" in spec else lo + 1 + n
            return rng.randint(lo, max(lo, hi))
        if kind == "number":
            lo = float(spec.get("minimum", 0))
            hi = float(spec.get("maximum", lo + 100))
            return round(rng.uniform(lo, hi), 2) if not identity else round(lo + n + 1, 2)
        if kind != "string":
            return None
        if fmt == "date":
            return self._date(low, identity).isoformat()
        if fmt == "date-time":
            return self._date(low, identity).isoformat() + "T08:00:00Z"
        max_len = int(spec.get("maxLength", 60))
        min_len = int(spec.get("minLength", 0))
        if low.endswith("time") and max_len >= 8:
            return f"{8 + rng.randrange(8):02d}:{rng.randrange(4) * 15:02d}:00"
        if low.endswith("uniqueid"):
            text = str(100000 + n)
        elif low == "namespace":
            text = "uri://ed-fi.org/" + _cap(self.res.entity)
        elif "electronicmailaddress" in low or low.endswith("email"):
            text = f"person{n + 1}@example.org"
        elif low == "firstname" or low.endswith("middlename"):
            text = FIRST_NAMES[rng.randrange(len(FIRST_NAMES))][0]
        elif low in ("lastsurname", "maidenname") or low.endswith("lastsurname"):
            text = LAST_NAMES[rng.randrange(len(LAST_NAMES))]
        elif identity:
            text = f"{_words(prop)} {n + 1}"
            if len(text) > max_len:
                text = str(n + 1)
        else:
            text = f"{_words(prop)} {rng.randrange(1, 1000)}"
        text = text[:max_len].rstrip() or str(n + 1)[:max_len]
        if len(text) < min_len:
            text = text.ljust(min_len, "0")
        return text

    def _date(self, low: str, identity: bool) -> date:
        rng = self.rng
        if "birth" in low:
            return date(2006, 1, 1) + timedelta(days=rng.randrange(13 * 365))
        if "end" in low or "exit" in low or "withdraw" in low:
            return SPRING_END - timedelta(days=rng.randrange(120))
        return FALL_START + timedelta(days=rng.randrange(120 if identity else 60))


class _Unsatisfiable(Exception):
    def __init__(self, prop: str, reason: str) -> None:
        super().__init__(reason)
        self.prop = prop
        self.reason = reason


def _why(d: GenericDistrict, res: Resource, targets: list[Resource], ref: Reference | None = None) -> str:
    if ref is not None and len(targets) == 1 and targets[0].schema_name == ref.target_schema \
            and set(ref.fields) != set(targets[0].key_fields):
        extra = sorted(set(ref.fields) - set(targets[0].key_fields))
        return (f"{ref.prop} names {', '.join(extra)}, which the model's natural key of {targets[0].name} lacks"
                " (role-named identity parts): the sandbox could not resolve it")
    if [t.path for t in targets] == [res.path]:
        return "it refers to the resource itself (left out: it would close a cycle)"
    later = [t.name for t in targets if d.position[t.path] >= d.position[res.path]]
    if later and len(later) == len(targets):
        return "its target " + "/".join(later) + " comes later in the dependency order (a cycle)"
    return "no " + "/".join(t.name for t in targets) + " item agrees with the fields already chosen"


def _fits(spec: JSON, value: Any) -> bool:
    kind = spec.get("type")
    if kind == "string":
        return isinstance(value, str) and len(value) <= int(spec.get("maxLength", 1 << 30))
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    return False


@functools.lru_cache(maxsize=4096)
def _words(name: str) -> str:
    """``sectionIdentifier`` -> ``Section Identifier``."""
    out = []
    for ch in name:
        if ch.isupper() and out:
            out.append(" ")
        out.append(ch)
    return _cap("".join(out))


def plan_model(model: ApiModel, students: int, seed: int = 0) -> GenericPlan:
    """The payloads of a synthetic district of ``students`` students for every resource ``model`` allows."""
    return GenericDistrict(model, students, seed).build()


def seed_model(store: BulkStore, model: ApiModel, students: int, seed: int = 0) -> dict[str, int]:
    """Load a deterministic synthetic district into ``store``; return counts per resource."""
    started = time.perf_counter()
    plan = plan_model(model, students, seed)
    logger.info("planned %d items of %d resources in %.2fs (%d left out)", sum(len(v) for v in plan.docs.values()),
                sum(1 for v in plan.docs.values() if v), time.perf_counter() - started, len(plan.left_out))
    for path, why in sorted(plan.left_out.items()):
        logger.info("not seeded: %s: %s", path, why)
    counts: dict[str, int] = {}
    for path, docs in plan.loads(copies=False):
        counts[path] = store.bulk_load(path, docs())
    logger.info("seeded %d items in %.2fs", sum(counts.values()), time.perf_counter() - started)
    return counts

"""The synthetic district: valid payloads, resolvable references, dependency order, determinism."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema
import pytest

from edfi_core.dependencies import dependency_graph
from edfi_core.openapi import SERVER_FIELDS, ApiModel, Resource
from edfi_sandbox.builtin_model import DESCRIPTOR_VALUES, builtin_documents
from edfi_sandbox.seed import District, seed_district

STUDENTS = 50


class CollectingStore:
    """A stand-in for the sandbox store: keeps every payload, in load order."""

    def __init__(self) -> None:
        self.loaded: dict[str, list[dict]] = {}
        self.order: list[str] = []

    def bulk_load(self, resource_path: str, docs: Iterable[dict]) -> int:
        assert resource_path not in self.loaded, f"{resource_path} loaded twice"
        self.order.append(resource_path)
        self.loaded[resource_path] = list(docs)
        return len(self.loaded[resource_path])


class CountingStore:
    def bulk_load(self, resource_path: str, docs: Iterable[dict]) -> int:
        return sum(1 for _ in docs)


@pytest.fixture(scope="module")
def model() -> ApiModel:
    return ApiModel.from_documents(builtin_documents())


@pytest.fixture(scope="module")
def seeded() -> tuple[CollectingStore, dict[str, int]]:
    store = CollectingStore()
    counts = seed_district(store, STUDENTS, seed=7)
    return store, counts


def _payload_schema(schema: Any) -> Any:
    """The resolved schema of a payload: server fields not required, no unknown properties."""
    if isinstance(schema, dict):
        out = {k: _payload_schema(v) for k, v in schema.items()}
        if "properties" in out:
            out["required"] = [r for r in out.get("required", []) if r not in SERVER_FIELDS]
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_payload_schema(v) for v in schema]
    return schema


def _dig(doc: Any, path: tuple[str, ...]) -> Iterator[Any]:
    """Every value at a JSON path; "[]" steps into arrays."""
    if not path:
        yield doc
        return
    head, rest = path[0], path[1:]
    if head == "[]":
        for item in doc if isinstance(doc, list) else []:
            yield from _dig(item, rest)
    elif isinstance(doc, dict) and head in doc:
        yield from _dig(doc[head], rest)


def _keys(res: Resource, docs: list[dict]) -> set[tuple]:
    return {tuple(res.natural_key(d).values()) for d in docs}


def test_counts_match_loaded(seeded: tuple[CollectingStore, dict[str, int]], model: ApiModel) -> None:
    store, counts = seeded
    assert counts == {path: len(docs) for path, docs in store.loaded.items()}
    assert set(counts) == set(model.resources), "every resource of the built-in model is seeded"
    assert all(counts.values())
    assert counts["/ed-fi/students"] == STUDENTS
    assert counts["/ed-fi/studentSchoolAssociations"] == STUDENTS
    assert counts["/ed-fi/studentSectionAssociations"] == 6 * STUDENTS
    assert counts["/ed-fi/schools"] == 1
    for path, values in DESCRIPTOR_VALUES.items():
        assert counts[path] == len(values)


def test_payloads_validate(seeded: tuple[CollectingStore, dict[str, int]], model: ApiModel) -> None:
    store, _ = seeded
    for path, docs in store.loaded.items():
        res = model.get(path)
        assert res is not None, path
        validator = jsonschema.Draft7Validator(_payload_schema(copy.deepcopy(res.schema)),
                                               format_checker=jsonschema.FormatChecker())
        for doc in docs:
            errors = list(validator.iter_errors(doc))
            assert not errors, f"{path}: {errors[0].message} in {doc}"
            assert not set(doc) & set(SERVER_FIELDS)


def test_natural_keys_unique(seeded: tuple[CollectingStore, dict[str, int]], model: ApiModel) -> None:
    store, _ = seeded
    for path, docs in store.loaded.items():
        res = model.get(path)
        assert res is not None
        keys = _keys(res, docs)
        assert len(keys) == len(docs), f"{path}: duplicate natural keys"
        assert all(None not in k for k in keys), f"{path}: incomplete natural key"


def _ref_key(obj: dict, target: Resource) -> tuple | None:
    """The target's natural key named by a reference object (abstract references: by position)."""
    if set(obj) == set(target.key_fields):
        return tuple(obj[f] for f in target.key_fields)
    if len(obj) == len(target.key_fields) == 1:  # educationOrganizationId -> schoolId, ...
        return tuple(obj.values())
    return None


def test_references_resolve(seeded: tuple[CollectingStore, dict[str, int]], model: ApiModel) -> None:
    store, _ = seeded
    keys = {path: _keys(model.resources[path], docs) for path, docs in store.loaded.items()}
    for path, docs in store.loaded.items():
        res = model.resources[path]
        for ref in res.references:
            targets = model.reference_targets(ref)
            assert targets
            for doc in docs:
                for obj in _dig(doc, ref.path):
                    assert set(obj) == set(ref.fields), f"{path}.{ref.prop}: {obj}"
                    assert any(_ref_key(obj, t) in keys.get(t.path, ()) for t in targets), (
                        f"{path}.{'.'.join(ref.path)} points to nothing: {obj}")


def test_descriptor_values_exist(seeded: tuple[CollectingStore, dict[str, int]], model: ApiModel) -> None:
    store, _ = seeded
    values = {
        path: {f"{d['namespace']}#{d['codeValue']}" for d in store.loaded[path]} for path in DESCRIPTOR_VALUES
    }
    used: set[str] = set()
    for path, docs in store.loaded.items():
        res = model.resources[path]
        for dpath in res.descriptor_paths:
            desc = model.descriptor_for(dpath[-1])
            assert desc is not None
            for doc in docs:
                for value in _dig(doc, dpath):
                    assert value in values[desc.path], f"{path}.{'.'.join(dpath)}: {value}"
                    used.add(desc.path)
    assert "/ed-fi/attendanceEventCategoryDescriptors" in used


def test_dependency_order(seeded: tuple[CollectingStore, dict[str, int]], model: ApiModel) -> None:
    store, _ = seeded
    graph = dependency_graph(model, person_retry=False)
    position = {path: n for n, path in enumerate(store.order)}
    for path in store.order:
        for dep in graph[path]:
            assert position[dep] < position[path], f"{path} loaded before {dep}"


def _digest(students: int, seed: int) -> str:
    h = hashlib.sha256()
    for path, docs in District(students, seed).loads():
        h.update(path.encode())
        for doc in docs():
            h.update(json.dumps(doc, sort_keys=True).encode())
    return h.hexdigest()


def test_deterministic() -> None:
    assert _digest(30, 3) == _digest(30, 3)
    assert _digest(30, 3) != _digest(30, 4)


def test_scale_per_student() -> None:
    """Attendance grows with students fast enough for 20,000 students to pass a million events."""
    students = 1000
    counts = seed_district(CountingStore(), students, seed=1)
    school = counts["/ed-fi/studentSchoolAttendanceEvents"]
    section = counts["/ed-fi/studentSectionAttendanceEvents"]
    assert (school + section) * 20_000 / students >= 1_100_000
    assert section * 20_000 / students >= 300_000
    assert counts["/ed-fi/schools"] == 2
    sections = counts["/ed-fi/sections"]
    assert 20 <= 6 * students / sections <= 26  # about 25 students a section

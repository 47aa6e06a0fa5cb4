"""The sandbox's compiled body check never accepts what jsonschema rejects, and accepts what it accepts."""

from __future__ import annotations

import random
from typing import Any

import pytest

from edfi_core.openapi import ApiModel
from edfi_sandbox.seed import district_loads
from edfi_sandbox.server import build_model
from edfi_sandbox.validation import Validators, _without_nulls, _writable, compile_check
from tests.conftest import SHARED

DS5_SPECS = [SHARED / "openapi" / "standards_resources-ds-5.0.oas3.yml",
             SHARED / "openapi" / "standards_descriptors-ds-5.0.oas3.yml"]


def instance(schema: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    """A random instance that is valid more often than not."""
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        return {name: instance(sub, rng, depth + 1) for name, sub in props.items()
                if name in required or (depth < 3 and rng.random() < 0.5)}
    if kind == "array":
        return [instance(schema.get("items") or {}, rng, depth + 1) for _ in range(rng.randint(0, 2))]
    if kind == "integer":
        return rng.randint(int(schema.get("minimum", 0)), int(schema.get("maximum", 2**31 - 1)))
    if kind == "number":
        return rng.uniform(0, 100)
    if kind == "boolean":
        return rng.random() < 0.5
    if schema.get("format") == "date":
        return f"20{rng.randint(10, 29)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    low, high = schema.get("minLength", 1), schema.get("maxLength", 20)
    return "x" * rng.randint(low, max(low, min(high, 30)))


BAD_VALUES = [None, "", "x" * 400, -5, 3.5, 1.0, True, [], {}, "2024-02-30", "2024-1-01", "20240101", 2**40,
              "2024-02-29", [None], ["x"], {"a": 1}]


def mutate(doc: Any, rng: random.Random) -> Any:
    """Replace, drop or add one value somewhere in ``doc``."""
    if isinstance(doc, dict) and doc:
        key = rng.choice(list(doc))
        roll = rng.random()
        out = dict(doc)
        if roll < 0.3:
            del out[key]
        elif roll < 0.7:
            out[key] = rng.choice(BAD_VALUES)
        elif roll < 0.8:
            out["unexpected"] = rng.choice(BAD_VALUES)
        else:
            out[key] = mutate(doc[key], rng)
        return out
    if isinstance(doc, list) and doc:
        out_list = list(doc)
        i = rng.randrange(len(out_list))
        out_list[i] = mutate(out_list[i], rng) if rng.random() < 0.7 else rng.choice(BAD_VALUES)
        return out_list
    return rng.choice(BAD_VALUES)


def agree(model: ApiModel, docs_by_path: dict[str, list[Any]], cases: int) -> tuple[int, int, int]:
    """(cases, accepted by the compiled check, schemas compiled); fails on any body the check accepts wrongly."""
    validators = Validators()
    rng = random.Random(7)
    accepted = compiled = total = 0
    for path, docs in docs_by_path.items():
        res = model.get(path)
        assert res is not None
        check = compile_check(_writable(res.schema))
        if check is None:
            continue
        compiled += 1
        strict = validators.validator(res)
        for doc in docs:
            for n in range(cases):
                body = doc if n == 0 else mutate(doc, rng)
                if not isinstance(body, dict):
                    continue
                total += 1
                errors = list(strict.iter_errors(_without_nulls(body)))
                if check(body):
                    accepted += 1
                    assert not errors, f"{path}: the compiled check accepted {body!r}: {errors[0].message}"
                if n == 0:
                    assert check(body) == (not errors), f"{path}: a valid body must pass the compiled check"
    return total, accepted, compiled


def test_compiled_check_agrees_with_jsonschema_on_seeded_bodies() -> None:
    model = build_model(None)
    docs: dict[str, list[Any]] = {}
    for path, make in district_loads(3):
        items = []
        for doc in make():
            items.append({k: v for k, v in doc.items() if k != "id"})
            if len(items) >= 3:
                break
        docs[path] = items
    total, accepted, compiled = agree(model, docs, 60)
    assert compiled == len(docs)  # every builtin schema compiles
    assert total > 5000 and 0 < accepted < total


@pytest.mark.skipif(not DS5_SPECS[0].exists(), reason="the real Ed-Fi specs are not beside the checkout")
def test_compiled_check_agrees_with_jsonschema_on_the_real_ds5_spec() -> None:
    model = build_model([str(p) for p in DS5_SPECS])
    rng = random.Random(11)
    docs = {res.path: [instance(_writable(res.schema), rng) for _ in range(2)] for res in model}
    total, accepted, compiled = agree(model, docs, 8)
    assert compiled >= 0.9 * len(docs)
    assert total > 5000 and 0 < accepted < total


def test_compiled_check_refuses_unknown_keywords() -> None:
    assert compile_check({"type": "string", "pattern": "^a"}) is None
    assert compile_check({"type": "string", "format": "date-time"}) is None
    check = compile_check({"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}})
    assert check is not None
    assert check({"a": 1}) and not check({"a": None}) and not check({"a": True}) and not check({})

"""A seeded sandbox: deterministic, complete (every reference resolves), served through the API."""

from __future__ import annotations

from edfi_sandbox.seed import seed_district
from edfi_sandbox.server import build_model
from edfi_sandbox.store import Store, _reference_objects


def seeded(students: int, seed: int = 0) -> Store:
    store = Store(build_model())
    with store.bulk_mode():
        seed_district(store, students, seed)
    return store


def content(store: Store) -> dict[str, list[dict]]:
    return {
        res.path: [{k: v for k, v in doc.items() if k != "_lastModifiedDate"} for doc in store.iter_docs(res.path)]
        for res in store.model
    }


def test_same_seed_same_district_ids_included() -> None:
    a, b, c = seeded(30), seeded(30), seeded(30, seed=1)
    try:
        assert content(a) == content(b)
        assert content(a) != content(c)
        assert a.change_version == b.change_version == sum(len(v) for v in content(a).values())
    finally:
        for s in (a, b, c):
            s.close()


def test_every_reference_resolves_to_a_seeded_item() -> None:
    store = seeded(40)
    try:
        model = store.model
        ids = {res.path: {d["id"] for d in store.iter_docs(res.path)} for res in model}
        checked = 0
        for res in model:
            for doc in store.iter_docs(res.path):
                for ref in res.references:
                    for obj in _reference_objects(doc, ref.path):
                        target_path, _, target_id = obj["link"]["href"].rpartition("/")
                        assert target_id in ids[target_path], (res.path, ref.path, obj)
                        checked += 1
        assert checked > 1000
        for res in model:
            assert store.count(res.path) > 0, f"{res.path} is empty"
    finally:
        store.close()

"""The end of a window, against answers that lie in chosen ways: no spoiling sequence loses an item at exit 0.

A window is complete when what was read accounts for what is in it (docs/window-completeness.md). The answers that
say so are spoiled here deterministically by :class:`tests.page_proxies.ScriptedPageProxy`: an adversary cuts
(or raises) the ``Total-Count`` of chosen count answers and drops items from the end of chosen pages, on every
answer to that page or on the first only, and never spoils one answer in two ways. Every choice is keyed by the
request (its query, and how many times it was answered before), so concurrent requests change nothing. The search
replays, for reverse offset windows and cursor windows on 7.3, a family of sequences built to defeat the check: the
pages the tap reads first are made to add up to exactly the count it was told. Each run must deliver every item,
or fail naming the stream; a run that exits 0 with an item missing is a loss (before the fix: 33 of 67 reverse
and 69 of 75 cursor sequences of this family were). Forward windows in a snapshot get the reverse family too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from edfi_sandbox.server import Sandbox
from tests.page_proxies import ScriptedPageProxy
from tests.tap_support import run_tap, tap_config

R = 47  # students: one window of five pages
SIZE = 10
PAGES_PER_PARTITION = 2  # the tap's pages_per_chunk: a partition per 20 counted items
COUNTS = (5, 11, 19, 20, 30, 40, 41, 46)  # cut counts: every offset of the last page, both ends of a page
RAISED = (48, 61)
SCOPES = (("plan",), ("plan", "page", "probe"))  # which count answers say the adversary's count


def _kind(query: dict[str, str]) -> str:
    """probe (one item), plan (the counting request: offset 0, a page, totalCount) or page."""
    if query.get("limit") == "1":
        return "probe"
    if query.get("offset") == "0" and query.get("totalCount") == "true":
        return "plan"
    return "page"


@dataclass
class Adversary:
    """One spoiling sequence. ``drops``: page position (reverse: its offset; cursor: (partition index, page
    index)) -> items dropped from the end of every answer to it, or of the first only (``once``); ``count``: the
    ``Total-Count`` of every count answer of a kind in ``scope`` that is not a dropped page (one spoil an answer)."""

    label: str
    count: int | None = None
    scope: tuple[str, ...] = ("plan",)
    drops: dict[Any, int] = field(default_factory=dict)
    #: the drops spoil only the first answer to a request (asked again, the page is whole)
    once: bool = False
    #: cursor pages: the position of a page token (filled from the answers: /partitions, Next-Page-Token)
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: what was seen per position (recon): items in the sandbox's answer
    sizes: dict[Any, int] = field(default_factory=dict)

    def __call__(self, path: str, query: dict[str, str], occurrence: int, body: bytes,
                 headers: dict[str, str]) -> tuple[bytes, dict[str, str]] | None:
        if path.endswith("/ed-fi/students/partitions"):
            for t, token in enumerate(orjson.loads(body).get("pageTokens", [])):
                self.positions[token] = (t, 0)
            return None
        if not path.endswith("/ed-fi/students") or body[:1] != b"[":
            return None
        next_key = next((k for k in headers if k.lower() == "next-page-token"), None)
        if "pageToken" in query:
            position: Any = self.positions.get(query["pageToken"])
            if position is not None and next_key is not None:
                self.positions.setdefault(headers[next_key], (position[0], position[1] + 1))
        else:
            position = int(query.get("offset", 0)) if _kind(query) == "page" else None
        items = orjson.loads(body)
        if position is not None:
            self.sizes.setdefault(position, len(items))
        drop = self.drops.get(position, 0) if position is not None and not (self.once and occurrence) else 0
        if drop:
            return orjson.dumps(items[: max(0, len(items) - drop)]), headers
        count_key = next((k for k in headers if k.lower() == "total-count"), None)
        if self.count is not None and count_key is not None and _kind(query) in self.scope:
            return body, {**headers, count_key: str(self.count)}
        return None


def _reverse_family() -> list[Adversary]:
    """Cut counts with the pages the tap reads (offsets (count // SIZE) * SIZE down to 0) short by exactly what
    makes them add up to the count, on one page (the last, the first or a middle one) or spread from the top;
    raised counts; and honest counts with short pages."""
    family = []
    for count in COUNTS:
        last = (count // SIZE) * SIZE
        offsets = list(range(last, -1, -SIZE))
        honest = {o: max(0, min(SIZE, R - o)) for o in offsets}
        short = sum(honest.values()) - count  # what must be dropped for the reads to equal the count
        placements: list[dict[Any, int]] = []
        for o in dict.fromkeys([last, 0, offsets[len(offsets) // 2]]):
            if honest[o] >= short > 0:
                placements.append({o: short})
        spread, left = {}, short
        for o in offsets:
            take = min(honest[o], left)
            if take:
                spread[o], left = take, left - take
        if spread not in placements and spread:
            placements.append(spread)
        for drops in placements:
            family.append(Adversary(f"count {count} (every count), drops {drops}", count, SCOPES[-1], drops))
            for scope in SCOPES:
                family.append(Adversary(f"count {count} ({'+'.join(scope)}), drops {drops} once", count, scope,
                                        drops, once=True))
    for count in RAISED:
        for scope in SCOPES:
            family.append(Adversary(f"count raised to {count} ({'+'.join(scope)})", count, scope, {40: 1}))
    for drops in ({0: 3}, {40: 7}, {20: 10}):
        family.append(Adversary(f"honest count, drops {drops}", None, (), drops))
    return family


def _cursor_family(sizes_by_partitions: dict[int, dict[Any, int]]) -> list[Adversary]:
    """For every partitioning the tap can ask for (1, 2 or 3 partitions of a window counted up to 47), every page
    of every partition cut short by 1 item, half its items or all of them: a short page ends a partition, so the
    items lost are the cut and the partition's later pages; the count is cut to what is left (when that count asks
    for the same partitions), or left honest."""
    family = []
    for number, sizes in sorted(sizes_by_partitions.items()):
        for (t, i), size in sorted(sizes.items()):
            later = sum(n for (u, j), n in sizes.items() if u == t and j > i)
            for drop in sorted({1, max(1, size // 2), size}):
                if drop > size:
                    continue
                count = R - drop - later
                if math.ceil(count / (SIZE * PAGES_PER_PARTITION)) == number and count > SIZE:
                    label = f"{number} partitions, count {count} (%s), page {i} of partition {t} short by {drop}"
                    family.append(Adversary(label % "every count", count, SCOPES[-1], {(t, i): drop}))
                    for scope in SCOPES:
                        family.append(Adversary(label % "+".join(scope) + " once", count, scope, {(t, i): drop},
                                                once=True))
                if drop == size // 2 and number == math.ceil(R / (SIZE * PAGES_PER_PARTITION)):
                    family.append(Adversary(f"{number} partitions, honest count, page {i} of partition {t} short "
                                            f"by {drop}", None, (), {(t, i): drop}))
    return family


@pytest.mark.parametrize("paging", ["offset", "cursor", "snapshot"])
def test_no_spoiling_sequence_loses_items_at_exit_0(paging: str, tmp_path: Path) -> None:
    with Sandbox("7.3", seed=R) as sb, ScriptedPageProxy(sb.base_url) as proxy:
        truth = {doc["id"] for doc in sb.store.iter_docs("/ed-fi/students")}
        assert len(truth) == R
        modes = {"paging": paging} if paging != "snapshot" else {"paging": "offset", "use_snapshot": "always"}
        if paging == "snapshot":
            sb.take_snapshot()
        config = {**tap_config(sb, resources=["students"], page_size=SIZE, max_window_rows=1000, **modes,
                               max_workers=4, max_tries=3, max_backoff_seconds=0.01,
                               token_cache=str(tmp_path / "tokens.json")),  # one token for all the runs
                  "base_url": proxy.url + sb.app.layout.root}

        def run(adversary: Adversary) -> tuple[set[str] | None, str]:
            proxy.replay(adversary)
            try:
                out = run_tap(config)
            except Exception as exc:  # the run failed: it must say which stream
                return None, str(exc)
            return {r["id"] for r in out.stream_records("students")}, ""

        if paging != "cursor":
            family = _reverse_family()
        else:  # recon: the pages of each partitioning, as the sandbox answers them (count cut, nothing dropped)
            recon: dict[int, dict[Any, int]] = {}
            for number, count in ((1, 20), (2, 40), (3, R)):
                scout = Adversary("recon", count, ("plan",))
                got, _ = run(scout)
                assert got == truth
                recon[number] = {k: v for k, v in scout.sizes.items() if isinstance(k, tuple)}
                assert len({t for t, _ in recon[number]}) == number, recon[number]
            family = _cursor_family(recon)
        assert len(family) > 30
        losses, failed, whole = [], 0, 0
        for adversary in family:
            got, error = run(adversary)
            assert proxy.spoiled > 0, f"{adversary.label}: nothing was spoiled ({error}): the sequence tested nothing"
            if got is None:
                assert "stream 'students'" in error, f"{adversary.label}: {error}"
                # pages whole when asked again, and a count that only the planning answer cut: read whole (a lie
                # told every time may fail the run)
                assert not (adversary.once and adversary.scope == ("plan",)), f"{adversary.label}: {error}"
                failed += 1
            elif got != truth:
                losses.append(f"{adversary.label}: {len(truth - got)} of {R} students lost at exit 0")
            else:
                whole += 1
        assert not losses, f"{len(losses)} of {len(family)} sequences lost items:\n" + "\n".join(losses)
        # the sequences that heal when asked again are read through; persistent lies can only fail, loudly
        assert whole and failed, (whole, failed)
        print(f"{paging}: {len(family)} sequences, {whole} read completely, {failed} failed naming the stream")

"""Stream groups balanced by size, for running tap-edfi as parallel jobs (one job per API and group).

:func:`plan_groups` cuts streams into at most ``max_groups`` groups from their item counts: longest-processing-time
first (Graham's LPT). Streams are taken largest first (ties by name) and each goes to the group with the least
work so far (ties by the group's index), so the few large resources end up alone and the hundreds of small ones
together. The weight of a stream is its count plus ``per_stream_cost`` (what a stream costs even when it is empty:
its count, ``/deletes`` and ``/keyChanges`` requests), so that 300 descriptors of ten items are not taken for
nothing. Then the plan uses the fewest groups that finish as early: the smallest number of groups whose LPT plan
has the same longest group as the plan with ``max_groups`` (a resource larger than a fair share sets the wall time
alone; more groups would only be shorter tasks beside it).

What that guarantees (weights as above; ``m`` the groups used):

* the longest group is at most ``4/3 - 1/(3m)`` times the longest group of the best possible plan into ``m``
  groups (Graham 1969, the LPT bound);
* every group of more than one stream exceeds the shortest group by at most its own smallest stream (the last
  one LPT placed there: it went to the group that was then the shortest), so it is at most **twice** the shortest
  group;
* a group longer than that is one stream alone: the largest stream, which no plan of any number of groups can cut
  (a stream is read by one job); its job is the run's wall time whatever the plan.

The same counts give the same plan (no randomness, no dependence on the order of ``counts``).

The command line (``tap-edfi-groups --config config.json --groups 8``, or ``python -m tap_edfi.groups``) reads the
counts from the API, one ``totalCount=true`` request per selected resource (``limit=0`` from 7.0, ``limit=1``
before), concurrently (``max_workers`` of the config), through the tap's own client (retries, tokens, the
``token_cache``), and prints the plan as JSON: per group the tap-edfi stream names (a resource's items stream with
its ``_deletes`` and ``_key_changes`` streams, as the config makes them), Meltano ``select`` patterns and the
values of the tap's ``resources`` setting. See docs/scaling.md.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

logger = logging.getLogger("tap-edfi-groups")

#: the weight of an empty stream, in items: its count request and the change-query requests of a run
PER_STREAM_COST = 50


def _lpt(weights: Sequence[tuple[str, int]], groups: int) -> list[tuple[int, list[str]]]:
    """``weights`` (sorted: largest first, then by name) into ``groups`` groups: [(load, names)] by index."""
    loads = [(0, i) for i in range(groups)]  # a heap of (load, index): the least loaded, then the lowest index
    members: list[list[str]] = [[] for _ in range(groups)]
    totals = [0] * groups
    for name, weight in weights:
        load, index = heapq.heappop(loads)
        members[index].append(name)
        totals[index] = load + weight
        heapq.heappush(loads, (load + weight, index))
    return [(totals[i], members[i]) for i in range(groups)]


def plan_groups(counts: Mapping[str, int], max_groups: int, *,
                per_stream_cost: int = PER_STREAM_COST) -> list[list[str]]:
    """At most ``max_groups`` groups of the streams of ``counts`` (stream name -> items), balanced by size.

    Groups come largest first; inside a group streams are sorted by name. Deterministic; the bounds it achieves
    are in this module's docstring. ``max_groups`` below 1 is an error; fewer streams than ``max_groups`` give one
    group per stream.
    """
    if max_groups < 1:
        raise ValueError(f"max_groups must be at least 1, not {max_groups}")
    if not counts:
        return []
    weights = sorted(((str(name), max(0, int(n)) + max(0, per_stream_cost)) for name, n in counts.items()),
                     key=lambda nw: (-nw[1], nw[0]))
    most = min(max_groups, len(weights))
    best = _lpt(weights, most)
    longest = max(load for load, _ in best)
    # the fewest groups whose longest group is no longer (a large stream alone sets it: fewer, fuller groups)
    for groups in range(1, most):
        plan = _lpt(weights, groups)
        if max(load for load, _ in plan) <= longest:
            best = plan
            break
    best = [(load, names) for load, names in best if names]
    best.sort(key=lambda g: (-g[0], sorted(g[1])))
    return [sorted(names) for _, names in best]


def group_loads(groups: Sequence[Sequence[str]], counts: Mapping[str, int], *,
                per_stream_cost: int = PER_STREAM_COST) -> list[int]:
    """The weight of each group (its streams' counts plus ``per_stream_cost`` each), as :func:`plan_groups` saw
    it."""
    return [sum(max(0, int(counts[n])) + max(0, per_stream_cost) for n in g) for g in groups]


# -- counts from the API ------------------------------------------------------------------------------------------
def count_items(tap: Any, resources: Sequence[Any]) -> dict[str, int]:
    """Items of each resource (by its items stream name), counted concurrently through the tap's client.

    A resource the client may not read (403) counts 0 with a warning (the tap skips it the same way unless
    ``fail_on_forbidden``); an API that gives no ``Total-Count`` fails: the counts are what the plan is made of.
    """
    from edfi_core.session import EdFiHTTPError, check
    from tap_edfi.streams import stream_name

    client = tap.client
    settings = tap.settings
    limit = client.info.min_limit
    profile = settings.get("profile")

    def one(res: Any) -> tuple[str, int]:
        url = client.data_url(res.path)
        params = {"offset": 0, "limit": limit, "totalCount": "true"}
        headers = {}
        if profile:
            headers["Accept"] = f"application/vnd.ed-fi.{res.entity.lower()}.{profile.lower()}.readable+json"
        resp = client.request("GET", url, params=params, headers=headers)
        name = stream_name(res)
        if resp.status_code == 403 and not settings.get("fail_on_forbidden"):
            logger.warning("%s: not authorized (HTTP 403); counted as 0 items", name)
            return name, 0
        check(resp, "GET", url, params)
        value = (resp.headers.get("Total-Count") or "").strip()
        if not value.isdigit():
            raise EdFiHTTPError("GET", url, resp.status_code,
                                "the API gave no Total-Count header for totalCount=true: the plan needs counts")
        return name, int(value)

    workers = max(1, min(int(settings["max_workers"]), len(resources) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edfi-count") as pool:
        return dict(pool.map(one, resources))


def plan_for_tap(tap: Any, max_groups: int, *, per_stream_cost: int = PER_STREAM_COST) -> dict[str, Any]:
    """The plan for the API and settings of ``tap`` (a :class:`~tap_edfi.tap.TapEdFi`), as printed by the CLI."""
    from tap_edfi.streams import stream_name

    resources = tap.selected_resources()
    counts = count_items(tap, resources)
    by_base: dict[str, list[str]] = {}
    for stream in tap.discover_streams():  # the streams this config makes, by their resource's items stream
        by_base.setdefault(stream_name(stream.resource), []).append(stream.name)
    groups = plan_groups(counts, max_groups, per_stream_cost=per_stream_cost)
    loads = group_loads(groups, counts, per_stream_cost=per_stream_cost)
    out = []
    for index, (bases, load) in enumerate(zip(groups, loads, strict=True), start=1):
        streams = sorted(s for b in bases for s in by_base.get(b, [b]))
        out.append({
            "name": f"group{index:02d}",
            "items": sum(counts[b] for b in bases),
            "weight": load,
            "resources": list(bases),
            "streams": streams,
            "select": [f"{s}.*" for s in streams],
        })
    return {
        "api": tap.client.base_url,
        "max_groups": max_groups,
        "per_stream_cost": per_stream_cost,
        "total_items": sum(counts.values()),
        "counts": dict(sorted(counts.items())),
        "groups": out,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``tap-edfi-groups --config config.json --groups 8 [--output plan.json]``."""
    from edfi_core.errors import EXIT_KNOWN_FAILURE, explain

    parser = argparse.ArgumentParser(
        prog="tap-edfi-groups",
        description="Plan tap-edfi stream groups balanced by item counts read from the API (docs/scaling.md).")
    parser.add_argument("--config", action="append", required=True,
                        help="tap-edfi config file (JSON); repeat to merge several, later ones win")
    parser.add_argument("--groups", type=int, default=8, help="most groups (default 8)")
    parser.add_argument("--per-stream-cost", type=int, default=PER_STREAM_COST,
                        help=f"weight of an empty stream, in items (default {PER_STREAM_COST})")
    parser.add_argument("--output", help="write the plan here instead of stdout")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.groups < 1:
        parser.error("--groups must be at least 1")

    from edfi_core.auth import AuthError
    from edfi_core.openapi import SpecError
    from edfi_core.session import EdFiHTTPError
    from tap_edfi.sync import SettingsError
    from tap_edfi.tap import TapEdFi

    config: dict[str, Any] = {}
    for path in args.config:
        config.update(json.loads(Path(path).read_text()))
    tap = None
    try:
        tap = TapEdFi(config=config, parse_env_config=True, validate_config=True, setup_mapper=False)
        plan = plan_for_tap(tap, args.groups, per_stream_cost=args.per_stream_cost)
    except (AuthError, EdFiHTTPError, SettingsError, SpecError, ValueError) as exc:
        logger.debug("the failure in full", exc_info=True)
        logger.error("%s", explain(exc))
        return EXIT_KNOWN_FAILURE
    finally:
        if tap is not None and "client" in tap.__dict__:
            tap.client.close()
    text = json.dumps(plan, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    groups = plan["groups"]
    logger.info("%d resources, %d items in %d groups (largest %d items, smallest %d)", len(plan["counts"]),
                plan["total_items"], len(groups), groups[0]["items"] if groups else 0,
                groups[-1]["items"] if groups else 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

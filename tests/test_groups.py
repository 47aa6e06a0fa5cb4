"""Stream groups balanced by size (issue 15): the planner's bounds on the real DS 5.0 resource list with a district's
skewed counts, and the ``tap-edfi-groups`` command over loopback against seeded sandboxes (its counts are the API's,
its groups cover every stream the tap makes exactly once, and the tap run per group reads everything)."""

from __future__ import annotations

import fnmatch
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edfi_core.openapi import ApiModel
from tap_edfi.groups import PER_STREAM_COST, group_loads, plan_groups
from tap_edfi.streams import stream_name
from tap_edfi.tap import TapEdFi
from tests.conftest import DS5_SPECS
from tests.tap_support import REPO, Warehouse, assert_matches, run_tap, tap_config

GROUPS_CLI = str(REPO / ".venv" / "bin" / "tap-edfi-groups")
#: items per student of the large resources of a district (a year of daily and period attendance, grades, ...)
PER_STUDENT = {
    "studentSectionAttendanceEvents": 150, "studentSchoolAttendanceEvents": 40, "studentGradebookEntries": 30,
    "grades": 16, "studentSectionAssociations": 8, "courseTranscripts": 6, "studentAssessments": 5,
    "reportCards": 4, "studentDisciplineIncidentBehaviorAssociations": 0.3, "studentSchoolAssociations": 1.2,
    "studentEducationOrganizationAssociations": 1.1, "students": 1, "studentContactAssociations": 1.6,
    "contacts": 1.5, "studentProgramAssociations": 0.4, "studentSpecialEducationProgramAssociations": 0.15,
    "studentSchoolFoodServiceProgramAssociations": 0.5, "studentCohortAssociations": 0.2,
}


@pytest.fixture(scope="module")
def ds5_names() -> list[str]:
    return sorted(stream_name(res) for res in ApiModel.from_files(DS5_SPECS))


def district_counts(names: list[str], students: int, seed: int = 15, *, period_attendance: bool = True
                    ) -> dict[str, int]:
    """A district's counts over the real DS 5.0 resource list: the large student resources above, a long tail of
    small ones (descriptors: a few dozen items, other resources: heavy-tailed around a few hundred). Without
    ``period_attendance``, a district that takes daily attendance only (no studentSectionAttendanceEvents)."""
    rng = random.Random(seed)
    counts = {}
    for name in names:
        if name == "studentSectionAttendanceEvents" and not period_attendance:
            counts[name] = 0
        elif name in PER_STUDENT:
            counts[name] = int(PER_STUDENT[name] * students)
        elif name.endswith("Descriptors"):
            counts[name] = rng.randint(2, 60)
        else:
            counts[name] = int(rng.paretovariate(1.2) * 50) if rng.random() < 0.6 else 0
    return counts


def check_bounds(groups: list[list[str]], counts: dict[str, int], max_groups: int) -> None:
    """What tap_edfi.groups documents."""
    assert 1 <= len(groups) <= max_groups
    flat = [n for g in groups for n in g]
    assert sorted(flat) == sorted(counts)  # every stream, once
    weight = {n: c + PER_STREAM_COST for n, c in counts.items()}
    loads = group_loads(groups, counts)
    assert loads == sorted(loads, reverse=True)  # largest first
    shortest = min(loads)
    for group, load in zip(groups, loads, strict=True):
        if len(group) > 1:
            # exceeds the shortest by at most its own smallest stream, hence at most twice the shortest
            assert load - shortest <= min(weight[n] for n in group), (group, load, shortest)
            assert load <= 2 * shortest
        elif load > 2 * shortest:
            assert weight[group[0]] == max(weight.values())  # the largest stream alone: no plan is shorter
    # Graham's bound against the best plan's lower bound (the largest stream, an even share)
    m = len(groups)
    lower = max(max(weight.values()), sum(weight.values()) / m)
    assert loads[0] <= (4 / 3 - 1 / (3 * m)) * lower + 1e-9 or len(groups[0]) == 1


@pytest.mark.parametrize("period_attendance", [True, False])
@pytest.mark.parametrize("students", [800, 20_000])
@pytest.mark.parametrize("max_groups", [2, 4, 8, 16, 40])
def test_plan_on_the_ds5_resource_list_with_district_counts(ds5_names: list[str], students: int, max_groups: int,
                                                             period_attendance: bool) -> None:
    counts = district_counts(ds5_names, students, period_attendance=period_attendance)
    assert len(counts) > 300
    groups = plan_groups(counts, max_groups)
    check_bounds(groups, counts, max_groups)
    # the same counts in another order: the same plan
    shuffled = list(counts.items())
    random.Random(1).shuffle(shuffled)
    assert plan_groups(dict(shuffled), max_groups) == groups
    loads = group_loads(groups, counts)
    assert loads[0] / loads[-1] < 2  # the bar is 20: the longest task is not twenty times the shortest
    biggest = max(counts, key=lambda n: counts[n])
    weight = counts[biggest] + PER_STREAM_COST
    if weight >= sum(counts.values()) / max_groups + len(counts) * PER_STREAM_COST / max_groups:
        # the largest stream outweighs an even share: it runs alone and sets the wall time, and the others fill as
        # few groups as finish no later (more groups would only be shorter tasks beside it)
        assert [biggest] in groups
        assert loads[0] == weight
        assert len(groups) == max_groups or plan_groups(counts, len(groups) - 1) != groups
    else:
        assert len(groups) == max_groups


def test_plan_small_cases() -> None:
    assert plan_groups({}, 4) == []
    assert plan_groups({"a": 5}, 4) == [["a"]]
    assert plan_groups({"a": 5, "b": 5, "c": 5}, 1) == [["a", "b", "c"]]
    # three equal streams into two groups and into three: one each when there are groups for it
    assert plan_groups({"a": 5, "b": 5, "c": 5}, 3) == [["a"], ["b"], ["c"]]
    # a large stream alone, the small ones together (three groups would not finish sooner)
    assert plan_groups({"big": 10_000, "s1": 10, "s2": 10, "s3": 10}, 3) == [["big"], ["s1", "s2", "s3"]]
    # ties are broken by name, never by the order of the mapping
    assert plan_groups({"b": 1, "a": 1, "d": 1, "c": 1}, 2) == plan_groups({"d": 1, "c": 1, "a": 1, "b": 1}, 2)
    with pytest.raises(ValueError, match="max_groups"):
        plan_groups({"a": 1}, 0)
    # per_stream_cost: without it, empty streams weigh nothing (they join the large one: no later), with it they
    # are work of their own
    counts = {"big": 1000, **{f"d{i:02d}": 0 for i in range(40)}}
    assert plan_groups(counts, 2, per_stream_cost=0) == [sorted(counts)]
    assert plan_groups(counts, 2, per_stream_cost=25) == [["big"], sorted(n for n in counts if n != "big")]


# -- the command line over loopback ----------------------------------------------------------------------------
def run_cli(config: dict[str, Any], tmp: Path, *args: str) -> subprocess.CompletedProcess:
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    return subprocess.run([GROUPS_CLI, "--config", str(path), *args], capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "error::ResourceWarning"})


@pytest.mark.parametrize("version", ["7.3", "5.3"])  # limit=0 from 7.0, limit=1 before
def test_cli_plans_from_the_apis_counts(make_sandbox: Any, tmp_path: Path, version: str) -> None:
    sb = make_sandbox(version, seed=30)
    config = tap_config(sb, token_cache="off")
    proc = run_cli(config, tmp_path, "--groups", "4")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    plan = json.loads(proc.stdout)
    # the counts are the API's
    expected = {stream_name(res): sum(1 for _ in sb.store.iter_docs(res.path)) for res in sb.model}
    assert plan["counts"] == expected
    assert plan["total_items"] == sum(expected.values())
    groups = plan["groups"]
    assert len(groups) == 4 and groups[0]["weight"] < 2 * groups[-1]["weight"]
    assert [g["resources"] for g in groups] == plan_groups(expected, 4)
    # every stream the tap makes with this config, in exactly one group; select patterns pick exactly its streams
    streams = [s.name for s in TapEdFi(config=config).discover_streams()]
    planned = [s for g in groups for s in g["streams"]]
    assert sorted(planned) == sorted(streams)
    for g in groups:
        picked = {s for s in streams if any(fnmatch.fnmatchcase(f"{s}.id", p) for p in g["select"])}
        assert picked == set(g["streams"])
        assert g["items"] == sum(expected[r] for r in g["resources"])
    # one tap run per group (its resources setting) reads the whole API
    wh = Warehouse()
    for g in groups:
        wh.apply(run_tap({**config, "resources": g["resources"]}))
    assert_matches(wh, sb)
    assert len(sb.app.tokens.peak_live) == 1 and sb.app.tokens.issued >= 1


def test_cli_respects_the_tap_settings_and_fails_clearly(make_sandbox: Any, tmp_path: Path) -> None:
    sb = make_sandbox("7.3", seed=5)
    config = tap_config(sb, token_cache="off", include_descriptors=False, key_changes=False,
                        exclude_resources=["studentSchoolAttendanceEvents"])
    proc = run_cli(config, tmp_path, "--groups", "3")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    plan = json.loads(proc.stdout)
    names = {stream_name(r) for r in sb.model if not r.is_descriptor} - {"studentSchoolAttendanceEvents"}
    assert set(plan["counts"]) == names
    assert sorted(s for g in plan["groups"] for s in g["streams"]) == sorted(names)  # no _key_changes streams
    # a wrong secret: one ERROR line naming the token URL, exit 2, no traceback, no secret
    proc = run_cli({**config, "client_secret": "not-the-secret"}, tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and proc.stdout == b""
    assert "token request to" in err and "/oauth/token" in err and "check client_id and client_secret" in err
    assert "Traceback" not in err and "not-the-secret" not in err
    # no --config: the TAP_EDFI_* environment variables, as for the tap
    env = {"TAP_EDFI_BASE_URL": config["base_url"], "TAP_EDFI_CLIENT_ID": sb.client_id,
           "TAP_EDFI_CLIENT_SECRET": sb.client_secret, "TAP_EDFI_TOKEN_CACHE": "off"}
    proc = subprocess.run([GROUPS_CLI, "--groups", "3"], capture_output=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert set(json.loads(proc.stdout)["counts"]) == {stream_name(r) for r in sb.model}
    assert sb.client_secret.encode() not in proc.stderr
    proc = run_cli(config, tmp_path, "--groups", "0")
    assert proc.returncode == 2 and b"--groups must be at least 1" in proc.stderr

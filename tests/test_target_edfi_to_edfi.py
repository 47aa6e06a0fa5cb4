"""Ed-Fi to Ed-Fi: tap-edfi from sandbox A into target-edfi to sandbox B, what the Ed-Fi API Publisher does.

After the first run B holds what A holds; then A changes (inserts, updates, key changes on key-updatable resources
with their cascades, deletes) and the next incremental run brings B level again. Content is compared by natural
key and fields (ids, etags, dates and links aside). In process for every API version and routing, and through
``meltano run tap-edfi target-edfi`` with the project's meltano.yml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from edfi_sandbox.server import Sandbox
from tests.tap_support import REPO, Mutator, run_tap, standard_changes, tap_config
from tests.target_support import RequestCounter, content, diff_content, run_target, target_config

#: id -> (api version, sandbox options, target config extras)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "5.3": ("5.3", {}, {}),
    "6.1-year": ("6.1", {"api_mode": "year", "school_year": 2025}, {"school_year": 2025}),
    "7.3-tenant-context": ("7.3", {"tenant": "gbisd", "context": "2025"}, {}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_replication_follows_every_kind_of_change(variant: str, make_sandbox: Any, tmp_path: Path) -> None:
    version, options, extra = VARIANTS[variant]
    a = make_sandbox(version, seed=6, **options)
    b = make_sandbox(version, **options)
    counter = RequestCounter(b)
    config = target_config(b, tmp_path / "log.db", **extra)

    first = run_tap(tap_config(a, **extra))
    run = run_target(config, first.raw)
    assert run.exit_code == 0, run.results
    assert diff_content(content(a), content(b)) == []
    assert run.states == [first.last_state]

    m = standard_changes(a, 1)  # inserts, updates, key changes (cascading on classPeriods), deletes
    m.change_key("/ed-fi/sessions", 1, "sessionName", lambda d: d["sessionName"] + " (renamed)")  # deep cascade
    second = run_tap(tap_config(a, **extra), state=first.last_state)
    counter.reset()
    run = run_target(config, second.raw)
    assert run.exit_code == 0, run.results
    assert diff_content(content(a), content(b)) == []
    totals = run.totals
    assert totals["failed_all"] == 0 and totals["deleted"] >= 11 and totals["created"] == 3
    # at most one write per record the tap sent (unchanged items skipped, cascaded key changes found in place)
    assert counter.writes <= len(second.records)
    assert run.states == [second.last_state]

    # the same input again (a rerun after a lost STATE): nothing is written twice
    counter.reset()
    run = run_target(config, second.raw)
    assert run.exit_code == 0
    assert counter.writes == 0


MELTANO = shutil.which("meltano") or ("/tmp/meltano-venv/bin/meltano" if Path("/tmp/meltano-venv/bin/meltano").exists()
                                      else None)


def _meltano(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    assert MELTANO is not None
    return subprocess.run([MELTANO, *args], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(MELTANO is None, reason="meltano is not installed")
def test_meltano_run_tap_edfi_target_edfi(tmp_path: Path) -> None:
    for kind, name in (("extractors", "tap-edfi"), ("loaders", "target-edfi")):
        if not (REPO / ".meltano" / kind / name).exists():
            proc = _meltano(["install", kind[:-1], name])
            if proc.returncode != 0:
                pytest.skip(f"meltano install {name} failed: {proc.stderr[-500:]}")
    with Sandbox("7.3", seed=6) as a, Sandbox("7.3") as b:
        env = {"TAP_EDFI_BASE_URL": a.api_root, "TAP_EDFI_CLIENT_ID": a.client_id,
               "TAP_EDFI_CLIENT_SECRET": a.client_secret, "TARGET_EDFI_BASE_URL": b.api_root,
               "TARGET_EDFI_CLIENT_ID": b.client_id, "TARGET_EDFI_CLIENT_SECRET": b.client_secret,
               "TARGET_EDFI_TRANSACTION_LOG": str(tmp_path / "log.db"),
               "TARGET_EDFI_RESULTS_FILE": str(tmp_path / "results.json")}
        suffix = ["--state-id-suffix", uuid.uuid4().hex[:8]]
        proc = _meltano(["run", *suffix, "tap-edfi", "target-edfi"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert diff_content(content(a), content(b)) == []

        standard_changes(a, 1)
        Mutator(a).change_key("/ed-fi/sessions", 1, "sessionName", lambda d: d["sessionName"] + " (renamed)")
        proc = _meltano(["run", *suffix, "tap-edfi", "target-edfi"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert diff_content(content(a), content(b)) == []
        assert "skipped unchanged" in proc.stderr  # the run summary

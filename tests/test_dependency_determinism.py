"""The dependency order of a model with cycles (DS 6.0) is the same in every process, whatever the hash seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import OPENAPI, REPO

SCRIPT = """
import json, sys
from edfi_core.dependencies import dependency_graph, levels
from edfi_core.openapi import ApiModel
model = ApiModel.from_files(sys.argv[1:])
print(json.dumps(levels(dependency_graph(model)), sort_keys=True))
"""


def test_ds6_dependency_levels_do_not_depend_on_the_hash_seed() -> None:
    specs = [str(OPENAPI / f"standards_{kind}-ds-6.0.oas3.yml") for kind in ("resources", "descriptors")]
    results = []
    for seed in ("1", "2", "3"):
        proc = subprocess.run([sys.executable, "-c", SCRIPT, *specs], capture_output=True, text=True, timeout=300,
                              cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        results.append(json.loads(proc.stdout))
    assert len(results[0]) > 300
    assert results[0] == results[1] == results[2]

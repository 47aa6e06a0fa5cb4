"""The README's settings tables are what the plugins say about themselves, and meltano.yml declares them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def settings_rows(markdown: str) -> list[str]:
    """The rows of the first settings table in a markdown text."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Setting |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line.strip())
    return rows


def readme_section(name: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {name}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


@pytest.mark.parametrize("plugin", ["tap-edfi", "target-edfi"])
def test_readme_settings_table_is_generated_from_about(plugin: str) -> None:
    about = subprocess.run([str(REPO / ".venv" / "bin" / plugin), "--about", "--format=markdown"],
                           capture_output=True, text=True, timeout=120, check=True).stdout
    assert settings_rows(readme_section(plugin)) == settings_rows(about)


@pytest.mark.parametrize(("plugin", "kind"), [("tap-edfi", "extractors"), ("target-edfi", "loaders")])
def test_meltano_yml_declares_every_setting(plugin: str, kind: str) -> None:
    about = subprocess.run([str(REPO / ".venv" / "bin" / plugin), "--about", "--format=json"],
                           capture_output=True, text=True, timeout=120, check=True).stdout
    own = {name for name in json.loads(about)["settings"]["properties"]}
    sdk = {"stream_maps", "stream_map_config", "faker_config", "flattening_enabled", "flattening_max_depth",
           "flattening_max_key_length", "flattening_separator", "batch_config", "add_record_metadata",
           "load_method", "validate_records", "default_target_schema", "batch_size_rows",
           "process_activate_version_messages"}
    project = yaml.safe_load((REPO / "meltano.yml").read_text())
    entry = next(p for p in project["plugins"][kind] if p["name"] == plugin)
    declared = {s["name"] for s in entry["settings"]}
    assert own - sdk <= declared, sorted(own - sdk - declared)
    secret = next(s for s in entry["settings"] if s["name"] == "client_secret")
    assert secret.get("sensitive") is True

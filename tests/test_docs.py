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


def about_json(plugin: str) -> dict:
    out = subprocess.run([str(REPO / ".venv" / "bin" / plugin), "--about", "--format=json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)


@pytest.mark.parametrize(("plugin", "kind"), [("tap-edfi", "extractors"), ("target-edfi", "loaders")])
def test_meltano_yml_and_hub_definition_say_what_about_says(plugin: str, kind: str) -> None:
    """Every setting (the SDK's too) with --about's description, a label and a kind; secrets as passwords."""
    about = about_json(plugin)
    props = about["settings"]["properties"]
    project = yaml.safe_load((REPO / "meltano.yml").read_text())
    hub = yaml.safe_load((REPO / "hub" / kind / f"{plugin}.yml").read_text())
    entry = next(p for p in project["plugins"][kind] if p["name"] == plugin)
    for definition in (entry, hub):
        settings = {s["name"]: s for s in definition["settings"]}
        assert list(settings) == list(props)  # the SDK's built-in settings (stream_maps, flattening_*, ...) too
        for name, schema in props.items():
            s = settings[name]
            assert s["description"] == schema.get("description", ""), name
            assert s["label"], name
            types = set(schema.get("type", [])) - {"null"} if isinstance(schema.get("type"), list) else set()
            if schema.get("secret"):
                assert (s["kind"], s.get("sensitive")) == ("password", True), name
            elif "enum" in schema:
                assert s["kind"] == "options", name
                assert [o["value"] for o in s["options"]] == [str(v) for v in schema["enum"]], name
            else:
                for json_type, meltano_kind in (("boolean", "boolean"), ("integer", "integer"),
                                                ("object", "object"), ("array", "array"), ("number", "decimal")):
                    if json_type in types:
                        assert s["kind"] == meltano_kind, name
                assert s["kind"] in {"string", "boolean", "integer", "object", "array", "decimal"}, name
            assert s.get("value") == schema.get("default"), name
        assert definition["capabilities"] == about["capabilities"]
        assert definition["settings_group_validation"] == [["base_url", "client_id", "client_secret"]]
    secrets = {"client_secret"} | ({"transaction_log"} if plugin == "target-edfi" else set())
    assert {s["name"] for s in entry["settings"] if s.get("sensitive")} >= secrets
    assert "structured-logging" in entry["capabilities"]
    check = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "scripts" / "plugin_definitions.py"),
                            "--check"], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr


#: the properties meltano/hub's schemas allow (schemas/plugin_definitions/{extractors,loaders}.schema.json with
#: common/common.schema.json and hub_metadata.schema.json; a setting: common/base_setting.schema.json, which
#: Hub's own definitions extend with `sensitive`)
HUB_PLUGIN_KEYS = {"name", "pip_url", "variant", "namespace", "label", "description", "executable", "settings",
                   "docs", "repo", "logo_url", "hidden", "settings_group_validation", "commands", "capabilities",
                   "metadata", "schema", "select", "maintenance_status", "domain_url", "keywords", "requires",
                   "definition", "next_steps", "settings_preamble", "usage", "prereq", "quality", "dialect",
                   "target_schema"}
HUB_SETTING_KEYS = {"name", "aliases", "label", "value", "placeholder", "kind", "description", "tooltip",
                    "documentation", "protected", "env", "value_processor", "value_post_processor", "oauth",
                    "options", "docs", "sensitive"}
HUB_KINDS = {"oauth", "hidden", "password", "date_iso8601", "file", "email", "integer", "options", "object", "array",
             "boolean", "string", "decimal"}


@pytest.mark.parametrize(("plugin", "kind"), [("tap-edfi", "extractors"), ("target-edfi", "loaders")])
def test_hub_definition_files_follow_hubs_schema(plugin: str, kind: str) -> None:
    hub = yaml.safe_load((REPO / "hub" / kind / f"{plugin}.yml").read_text())
    assert {"name", "namespace", "variant", "label"} <= set(hub) <= HUB_PLUGIN_KEYS
    assert (hub["name"], hub["namespace"], hub["executable"]) == (plugin, plugin.replace("-", "_"), plugin)
    assert hub["maintenance_status"] in {"active", "beta", "development", "inactive", "unknown"}
    assert hub["pip_url"].startswith("git+https://")
    for s in hub["settings"]:
        assert set(s) <= HUB_SETTING_KEYS, s["name"]
        assert s["kind"] in HUB_KINDS, s["name"]
        assert all(set(o) == {"label", "value"} and isinstance(o["value"], str) for o in s.get("options", []))


def test_plugins_install_without_the_sandbox_server_and_with_one_backoff() -> None:
    """`pip install edfi-singer` is the plugins; the server is `[sandbox]`; backoff is singer-sdk's own."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    base: set[str] = set()
    extras: dict[str, set[str]] = {}
    for line in requires("edfi-singer") or []:  # the installed metadata of pyproject.toml
        req = Requirement(line)
        extra = next((e for e in ("sandbox", "postgres", "dev") if req.marker and req.marker.evaluate({"extra": e})),
                     None)
        (extras.setdefault(extra, set()) if extra else base).add(req.name)
    server = {"starlette", "uvicorn"}
    assert not base & server
    assert extras["sandbox"] >= server
    assert extras["postgres"] == {"psycopg"}
    assert extras["dev"] >= {"pytest", "mypy", "edfi-singer"}  # edfi-singer[sandbox,postgres]
    sdk_backoff = {Requirement(r).name for r in requires("singer-sdk") or [] if "backoff" in Requirement(r).name}
    assert sdk_backoff == {"python-backoff"}
    assert {name for name in base if "backoff" in name} == sdk_backoff
    loader = yaml.safe_load((REPO / "meltano.yml").read_text())
    target = next(p for p in loader["plugins"]["loaders"] if p["name"] == "target-edfi")
    assert "[postgres]" in target["pip_url"]

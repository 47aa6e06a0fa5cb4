"""Meltano plugin definitions of tap-edfi and target-edfi, generated from what the plugins say about themselves.

``python scripts/plugin_definitions.py`` rewrites the ``settings``, ``settings_group_validation`` and
``capabilities`` of both plugins in ``meltano.yml`` and writes the Meltano Hub definition files
``hub/extractors/tap-edfi.yml`` and ``hub/loaders/target-edfi.yml`` from ``<plugin> --about --format=json``:
one setting per row of the README's settings table, with the same description, a label, the Meltano
``kind`` of its JSON type (``password`` and ``sensitive`` for secrets, ``options`` for enums) and its default.
It also rewrites the README's settings tables from ``<plugin> --about --format=markdown``.
``--check`` writes nothing and exits 1 when a file differs (``tests/test_docs.py`` checks the same).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MELTANO_YML = REPO / "meltano.yml"
#: where the project is published; the Hub definitions install from it (change it where it is published)
REPO_URL = "https://github.com/edfi-singer/edfi-singer"
PLUGINS = {"tap-edfi": "extractors", "target-edfi": "loaders"}
HUB_FILES = {"tap-edfi": REPO / "hub" / "extractors" / "tap-edfi.yml",
             "target-edfi": REPO / "hub" / "loaders" / "target-edfi.yml"}
HUB_META: dict[str, dict[str, Any]] = {
    "tap-edfi": {
        "label": "Ed-Fi ODS/API",
        "description": "Ed-Fi ODS/API resources and descriptors, incrementally through change queries",
        "keywords": ["api", "education", "ed-fi", "meltano_sdk"],
    },
    "target-edfi": {
        "label": "Ed-Fi ODS/API",
        "description": "Writes records to an Ed-Fi ODS/API in dependency order, with a durable transaction log",
        "keywords": ["api", "education", "ed-fi", "meltano_sdk"],
    },
}
ACRONYMS = {"url": "URL", "id": "ID", "ssl": "SSL", "api": "API", "oauth": "OAuth", "sql": "SQL"}
JSON_KINDS = {"object": "object", "array": "array", "boolean": "boolean", "integer": "integer",
              "number": "decimal", "string": "string"}
logger = logging.getLogger("plugin_definitions")


def about(plugin: str) -> dict[str, Any]:
    """``<plugin> --about --format=json`` of the plugin installed beside this Python."""
    exe = Path(sys.executable).parent / plugin
    out = subprocess.run([str(exe), "--about", "--format=json"], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    return json.loads(out)


def _types(schema: dict[str, Any]) -> list[str]:
    found: list[str] = []
    declared = schema.get("type")
    if isinstance(declared, str):
        found.append(declared)
    elif isinstance(declared, list):
        found.extend(declared)
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key, []):
            if isinstance(sub, dict):
                found.extend(_types(sub))
    return [t for t in found if t != "null"]


def kind_of(schema: dict[str, Any]) -> str:
    """The Meltano setting kind of a JSON schema property."""
    if schema.get("secret") or schema.get("writeOnly"):
        return "password"
    if "enum" in schema:
        return "options"
    types = _types(schema)
    for json_type in ("object", "array", "boolean", "integer", "number"):
        if json_type in types:
            return JSON_KINDS[json_type]
    return "string"


def label_of(name: str, schema: dict[str, Any]) -> str:
    if schema.get("title"):
        return str(schema["title"])
    words = name.replace(".", "_").strip("_").split("_")
    return " ".join(ACRONYMS.get(w, w.capitalize()) for w in words if w)


def setting(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "label": label_of(name, schema),
                             "description": schema.get("description", ""), "kind": kind_of(schema)}
    if entry["kind"] == "password":
        entry["sensitive"] = True
    if "enum" in schema:
        entry["options"] = [{"label": str(v).capitalize(), "value": str(v)} for v in schema["enum"] if v is not None]
    if schema.get("default") is not None:
        entry["value"] = schema["default"]
    return entry


def settings_of(info: dict[str, Any]) -> list[dict[str, Any]]:
    """One setting per property of ``--about``.

    Not one per nested property (``stream_maps.__else__``, ``faker_config.seed``) as the README table has them:
    Meltano would then pass ``"stream_maps": {"__else__": null}``, which drops every stream.
    """
    return [setting(name, schema) for name, schema in info["settings"]["properties"].items()]


def definition(plugin: str, info: dict[str, Any]) -> dict[str, Any]:
    """The parts of a plugin's definition that come from ``--about``."""
    return {
        "capabilities": list(info["capabilities"]),
        "settings_group_validation": [list(info["settings"].get("required", []))],
        "settings": settings_of(info),
    }


def hub_definition(plugin: str, info: dict[str, Any]) -> dict[str, Any]:
    """A Meltano Hub plugin definition (``_data/meltano/<type>/<name>/<variant>.yml`` in meltano/hub)."""
    return {
        "name": plugin,
        "variant": "edfi-singer",
        "namespace": plugin.replace("-", "_"),
        "label": HUB_META[plugin]["label"],
        "description": HUB_META[plugin]["description"],
        "pip_url": f"git+{REPO_URL}.git",
        "executable": plugin,
        "repo": REPO_URL,
        "docs": f"{REPO_URL}#{plugin}",
        "domain_url": "https://www.ed-fi.org/",
        "keywords": HUB_META[plugin]["keywords"],
        "maintenance_status": "active",
        **definition(plugin, info),
    }


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, width=120, allow_unicode=True)


def _block(text: str, plugin: str) -> tuple[int, int]:
    """Where a plugin's entry (``  - name: <plugin>`` up to the next entry or section) is in meltano.yml."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip() == f"  - name: {plugin}")
    end = start + 1
    while end < len(lines) and not lines[end].startswith("  - ") and lines[end].startswith(("   ", "\n")):
        end += 1
    return sum(len(line) for line in lines[:start]), sum(len(line) for line in lines[:end])


def render_meltano_yml(infos: dict[str, dict[str, Any]], text: str) -> str:
    """meltano.yml with the definitions of both plugins from ``--about`` (the rest of the file as it is)."""
    project = yaml.safe_load(text)
    for plugin, kind in PLUGINS.items():
        entry = next(p for p in project["plugins"][kind] if p["name"] == plugin)
        entry.update(definition(plugin, infos[plugin]))
        start, end = _block(text, plugin)
        block = "".join("  " + line for line in dump([entry]).splitlines(keepends=True))
        text = text[:start] + block + text[end:]
    return text


README = REPO / "README.md"


def about_markdown(plugin: str) -> str:
    exe = Path(sys.executable).parent / plugin
    return subprocess.run([str(exe), "--about", "--format=markdown"], capture_output=True, text=True, check=True,
                          timeout=120).stdout


def _table(lines: list[str], start: int) -> tuple[int, int]:
    """(first, end) line indexes of the settings table at or after ``start``: the header, the rule and the rows."""
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("| Setting |"))
    end = first + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return first, end


def render_readme(text: str) -> str:
    """The README with the settings table of each plugin's section replaced by its ``--about`` table."""
    lines = text.split("\n")
    for plugin in PLUGINS:
        about_lines = about_markdown(plugin).split("\n")
        a_first, a_end = _table(about_lines, 0)
        section = lines.index(f"## {plugin}")
        first, end = _table(lines, section)
        lines[first:end] = about_lines[a_first:a_end]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    infos = {plugin: about(plugin) for plugin in PLUGINS}
    wanted = {MELTANO_YML: render_meltano_yml(infos, MELTANO_YML.read_text()),
              README: render_readme(README.read_text())}
    for plugin, path in HUB_FILES.items():
        wanted[path] = dump(hub_definition(plugin, infos[plugin]))
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    for path in stale:
        if args.check:
            logger.error("%s is not what --about says: run python scripts/plugin_definitions.py",
                         path.relative_to(REPO))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(wanted[path])
            logger.info("wrote %s", path.relative_to(REPO))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

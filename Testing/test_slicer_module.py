"""Checks on the 3D Slicer extension that can run (and fail) without Slicer: the module compiles, every
widget it uses is in its .ui file, every Slicer name it calls was checked against Slicer's source, the
CMake lists name real files, and the ExtensionsIndex entry follows the catalog schema."""

import ast
import json
import py_compile
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import jsonschema

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "IBISAgent" / "IBISAgent.py"
UI = REPO / "IBISAgent" / "Resources" / "UI" / "IBISAgent.ui"
CHECKED = REPO / "IBISAgent" / "Testing" / "SlicerAPI.txt"
ROOTS = ("slicer", "qt", "sitkUtils", "SampleData", "PyTorchUtils")
# Methods of Slicer/Qt objects that are lowercase (C++ MRML/VTK methods are found by their capital letter).
QT_METHODS = {"currentNode", "currentSegmentID", "setMRMLScene", "sliceWidget", "mrmlSliceNode", "installTorch",
              "resourcePath", "delayDisplay"}  # fmt: skip


def module_tree():
    return ast.parse(MODULE.read_text(encoding="utf-8"))


def test_the_module_compiles():
    py_compile.compile(str(MODULE), doraise=True)


def test_every_widget_the_module_uses_is_in_the_ui_file():
    declared = {w.get("name") for w in ElementTree.parse(UI).iter("widget")}
    used = {
        node.attr
        for node in ast.walk(module_tree())
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }
    assert used and used <= declared, f"not in {UI.name}: {sorted(used - declared)}"
    assert 'resourcePath("UI/IBISAgent.ui")' in MODULE.read_text()


def _chain(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return list(reversed(parts))


def used_slicer_names():
    names = set()
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.Attribute):
            parts = _chain(node)
            if parts and parts[0] in ROOTS:
                depth = 3 if parts[0] == "slicer" and len(parts) > 2 and parts[1] in ("util", "app") else 2
                names.add(".".join(parts[:depth]))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            if method[:1].isupper() or method in QT_METHODS:
                names.add(method)
    return names


def test_every_slicer_name_used_was_checked_in_slicers_source():
    checked = {line.split()[0] for line in CHECKED.read_text(encoding="utf-8").splitlines() if line and line[0] != "#"}
    missing = used_slicer_names() - checked
    assert not missing, f"read these in Slicer's source, then list them in {CHECKED.name}: {sorted(missing)}"


def test_cmake_lists_name_existing_files():
    text = (REPO / "IBISAgent" / "CMakeLists.txt").read_text()
    listed = re.findall(r"^\s+(\$\{MODULE_NAME\}\.py|Resources/\S+)$", text, re.MULTILINE)
    assert listed
    for entry in listed:
        assert (REPO / "IBISAgent" / entry.replace("${MODULE_NAME}", "IBISAgent")).is_file(), entry
    top = (REPO / "CMakeLists.txt").read_text()
    for required in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(IBISAgent)",
                     "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})",
                     'set(EXTENSION_DEPENDS "PyTorch")'):  # fmt: skip
        assert required in top, required
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text and "WITH_GENERIC_TESTS" in text


# The properties of Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json.
CATALOG_ENTRY_SCHEMA = {
    "type": "object",
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "category": {"type": "string"},
        "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"},
        "scm_type": {"enum": ["git", "local"]},
        "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "build_subdirectory": {"type": "string"},
        "enabled": {"type": "boolean"},
        "tier": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}


def test_extensions_index_entry_follows_the_catalog_schema():
    entry = json.loads((REPO / "ExtensionsIndex" / "IBISAgent.json").read_text())
    jsonschema.validate(entry, CATALOG_ENTRY_SCHEMA)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["build_dependencies"] == ["PyTorch"]

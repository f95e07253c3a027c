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
EFFECT_DIR = REPO / "SegmentEditorIBISAgent"
DESKTOP_DIR = REPO / "IBISAgent" / "IBISAgentDesktop"
MRML_DIR = REPO / "IBISAgentMRML"
SLICER_FILES = (
    MODULE,
    EFFECT_DIR / "SegmentEditorIBISAgent.py",
    EFFECT_DIR / "SegmentEditorIBISAgentLib" / "SegmentEditorEffect.py",
    *sorted(DESKTOP_DIR.glob("*.py")),
    *sorted(MRML_DIR.glob("*.py")),  # runs on slicer-core in CI; its names must also exist in desktop Slicer 5.10
)
UI = REPO / "IBISAgent" / "Resources" / "UI" / "IBISAgent.ui"
CHECKED = REPO / "IBISAgent" / "Testing" / "SlicerAPI.txt"
ROOTS = ("slicer", "qt", "sitkUtils", "SampleData", "PyTorchUtils")
# Methods of Slicer/Qt objects that are lowercase (C++ MRML/VTK methods are found by their capital letter).
QT_METHODS = {"currentNode", "currentSegmentID", "setMRMLScene", "sliceWidget", "mrmlSliceNode", "installTorch",
              "resourcePath", "delayDisplay", "setSegmentationNode", "setSourceVolumeNode", "setCurrentSegmentID",
              "effectByName", "self", "parameterSetNode", "saveStateForUndo", "modifySegmentByLabelmap",
              "defaultModifierLabelmap", "addOptionsWidget", "addLabeledOptionsWidget", "xyToRas", "setPythonSource",
              "register", "className", "logic", "widgetRepresentation", "selectParameterNode", "undo", "addObserver",
              "removeObservers"}  # fmt: skip


def module_tree(path=MODULE):
    return ast.parse(path.read_text(encoding="utf-8"))


def test_the_module_and_the_effect_compile():
    for path in (*SLICER_FILES, EFFECT_DIR / "SegmentEditorIBISAgentLib" / "__init__.py"):
        py_compile.compile(str(path), doraise=True)


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
    assert 'resourcePath("UI/IBISAgent.ui")' in MODULE.read_text(encoding="utf-8")


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
    trees = [module_tree(path) for path in SLICER_FILES]
    # Calls on other imported modules (queue.Queue, os.path.join, ...) are not Slicer's.
    others = {a.asname or a.name for t in trees for n in ast.walk(t) if isinstance(n, ast.Import) for a in n.names}
    others -= set(ROOTS)
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.Attribute):
            parts = _chain(node)
            if parts and parts[0] in ROOTS:
                depth = 3 if parts[0] == "slicer" and len(parts) > 2 and parts[1] in ("util", "app") else 2
                names.add(".".join(parts[:depth]))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if _chain(node.func)[0] in others:
                continue
            method = node.func.attr
            if method[:1].isupper() or method in QT_METHODS:
                names.add(method)
    return names


def test_every_slicer_name_used_was_checked_in_slicers_source():
    checked = {line.split()[0] for line in CHECKED.read_text(encoding="utf-8").splitlines() if line and line[0] != "#"}
    ours = {n.name for path in SLICER_FILES for n in ast.walk(module_tree(path)) if isinstance(n, ast.ClassDef)}
    missing = used_slicer_names() - checked - ours
    assert not missing, f"read these in Slicer's source, then list them in {CHECKED.name}: {sorted(missing)}"


def test_cmake_lists_name_existing_files():
    for folder in ("IBISAgent", "SegmentEditorIBISAgent"):
        text = (REPO / folder / "CMakeLists.txt").read_text(encoding="utf-8")
        listed = re.findall(r"^\s+(\$\{MODULE_NAME\}\S*|Resources/\S+)$", text, re.MULTILINE)
        assert listed
        for entry in listed:
            assert (REPO / folder / entry.replace("${MODULE_NAME}", folder)).is_file(), entry
    text = (REPO / "IBISAgent" / "CMakeLists.txt").read_text(encoding="utf-8")
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for required in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(IBISAgent)",
                     "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})",
                     "add_subdirectory(SegmentEditorIBISAgent)",
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
    entry = json.loads((REPO / "ExtensionsIndex" / "IBISAgent.json").read_text(encoding="utf-8"))
    jsonschema.validate(entry, CATALOG_ENTRY_SCHEMA)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["build_dependencies"] == ["PyTorch"]


def test_the_effect_is_registered_at_startup_and_writes_undoably():
    register = (EFFECT_DIR / "SegmentEditorIBISAgent.py").read_text(encoding="utf-8")
    assert 'slicer.app.connect("startupCompleted()", self.registerEditorEffect)' in register
    effect = (EFFECT_DIR / "SegmentEditorIBISAgentLib" / "SegmentEditorEffect.py").read_text(encoding="utf-8")
    body = effect[effect.index("def applyMask") :]
    assert body.index("saveStateForUndo()") < body.index("modifySegmentByLabelmap(")
    # Other segments are never modified: "modify other segments" is off for the write and restored after it.
    assert body.index("SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)") < body.index("finally:")
    assert "parameters.SetOverwriteMode(overwrite)" in body[body.index("finally:") :]
    # The modifier is built by the MRML adapter, which honours both nodes' parent transforms (tested on slicer-core).
    assert "modifier_labelmap(segmentationNode, volumeNode, mask, reference)" in body
    module = MODULE.read_text(encoding="utf-8")
    adapter = module[: module.index("class IBISAgentTest")]  # the self-test may set up segments directly
    assert adapter.count("updateSegmentBinaryLabelmapFromArray") == 0  # the module writes only through the effect

"""House rules that keep 3D Slicer start-up fast and the core free of UI code."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "sam2", "slicer", "qt", "ctk", "vtk", "backend_server", "IBISAgentMRML")
LIGHT_MODULES = (
    "IBISAgentLib",
    "IBISAgentLib.agent.actions",
    "IBISAgentLib.agent.prompts",
    "IBISAgentLib.imaging.rendering",
    "IBISAgentLib.imaging.images",
    "IBISAgentLib.agent.trace",
    "IBISAgentLib.agent.session",
    "IBISAgentLib.models.weights",
    "IBISAgentLib.models.loading",
    "IBISAgentLib.tools",
    "IBISAgentLib.tools.click_tool",
    "IBISAgentLib.policies",
    "IBISAgentLib.cli",
    "IBISAgentLib.agent.backends",
    "IBISAgentLib.remote.client",
    "IBISAgentLib.remote.protocol",
    "IBISAgentLib.imaging.volume_case",
    "IBISAgentLib.tools.propagation",
    "IBISAgentLib.imaging.geometry",
    "IBISAgentLib.workflow",
    "IBISAgentLib.training.evaluation",
    "IBISAgentLib.training.episodes",
    "IBISAgentLib.training.grpo_trl",
)


def test_importing_the_library_loads_no_heavy_or_ui_module():
    code = (
        "import sys\n"
        f"for name in {LIGHT_MODULES!r}: __import__(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


def test_the_library_never_imports_slicer_qt_or_the_server():
    pattern = re.compile(r"^\s*(import|from)\s+(slicer|qt|ctk|vtk|backend_server|IBISAgentMRML)\b", re.MULTILINE)
    offenders = [str(p) for p in (REPO / "IBISAgentLib").rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_ruff_lint_and_format_are_clean():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed in this environment")
    lint = subprocess.run([ruff, "check", "."], capture_output=True, text=True, cwd=REPO)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run([ruff, "format", "--check", "."], capture_output=True, text=True, cwd=REPO)
    assert fmt.returncode == 0, fmt.stdout


def test_the_mrml_adapter_uses_only_what_desktop_slicer_and_slicer_core_share():
    """No Qt, no running application, no module registry, no sitkUtils: the same code runs in desktop Slicer,
    in the web app and on the command line."""
    forbidden = re.compile(
        r"^\s*(import|from)\s+(qt|ctk|sitkUtils|slicer\.ScriptedLoadableModule)\b|slicer\.(app|modules|mrmlScene)\b",
        re.MULTILINE,
    )
    files = list((REPO / "IBISAgentMRML").rglob("*.py"))
    assert files and [str(p) for p in files if forbidden.search(p.read_text(encoding="utf-8"))] == []


def test_the_desktop_skin_holds_no_workflow_of_its_own():
    """The module and the effect forward to the driver; only the driver starts threads or polls queues."""
    skin = [REPO / "IBISAgent" / "IBISAgent.py", *(REPO / "IBISAgent" / "IBISAgentDesktop").glob("*.py"),
            *(REPO / "SegmentEditorIBISAgent").rglob("*.py")]  # fmt: skip
    workflow = re.compile(r"threading\.Thread|\.open_session\(|\.add_click\(|snapshot|InteractionController")
    assert [str(p) for p in skin if workflow.search(p.read_text(encoding="utf-8"))] == []

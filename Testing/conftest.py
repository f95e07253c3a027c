"""Shared fixtures: tiny random-weight models built once per test run through the real saving code."""

from __future__ import annotations

import contextlib
import locale
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# Tests never reach a model hub; a test that needs the network says so by unsetting this itself.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# CI (CI=true) draws the same property-test examples every run, so a submission's CI result is reproducible;
# a developer's runs keep exploring new ones (and print the blob to replay a failure).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# CI runs the model tests on the CPU; IBISAGENT_TEST_DEVICE=cuda runs the same tests on a GPU machine.
TEST_DEVICE = os.environ.get("IBISAGENT_TEST_DEVICE", "cpu")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "IBISAgentLib" / "cli" / "samples" / "ct_thoracic_vertebra.png"
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _utf8_character_type():
    """Some C++ code loaded in this process (Slicer's core, ITK) sets the C locale, after which Python reads a
    child process's text as ASCII: every test starts with UTF-8 characters again (what CI's locale says)."""
    with contextlib.suppress(locale.Error):
        locale.setlocale(locale.LC_CTYPE, "C.UTF-8")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from IBISAgentLib.models.tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def device() -> str:
    return TEST_DEVICE


@pytest.fixture(scope="session")
def medsam2_tool(tiny_models, device):
    from IBISAgentLib.tools.click_tool import SAM2Tool

    return SAM2Tool(tiny_models[1], device=device)


@pytest.fixture(scope="session")
def sample_image() -> np.ndarray:
    from IBISAgentLib.imaging.images import read_rgb_image

    return read_rgb_image(SAMPLE)

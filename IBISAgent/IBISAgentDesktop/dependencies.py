"""What a local run needs installed (after one confirmation), and consent before images leave the computer."""

import importlib.util
import logging
import os
from urllib.parse import urlparse

import qt
import slicer

from . import settings

LOCAL_MODULES = ("torch", "transformers", "qwen_vl_utils", "sam2", "hydra", "iopath")
# What a local run needs besides Slicer's own packages (numpy, SimpleITK and requests are never replaced).
LOCAL_REQUIREMENTS = ("transformers>=5,<6", "qwen-vl-utils", "hydra-core", "iopath", "huggingface_hub", "scipy", "tqdm")
SAM2_REQUIREMENT = "sam2==1.1.0"


def missing_local_modules():
    return [name for name in LOCAL_MODULES if importlib.util.find_spec(name) is None]


def ready_for(choice):
    """True when the choice can run now: a server the user agreed to send images to, or installed models."""
    return consent_to_upload(choice.server) if choice.remote else ensure_local_dependencies()


def ensure_local_dependencies():
    """Installs what a local run needs after one confirmation; False when the user declines or it fails."""
    missing = missing_local_modules()
    if not missing:
        return True
    need_torch = "torch" in missing
    listing = ("PyTorch (through the PyTorch extension), " if need_torch else "") + ", ".join(
        (*LOCAL_REQUIREMENTS, SAM2_REQUIREMENT)
    )
    if not slicer.util.confirmOkCancelDisplay(
        f"Running IBISAgent on this computer needs: {listing}.\nInstall them now? (a few minutes; Slicer's own "
        "numpy, SimpleITK and requests are kept)",
        "IBISAgent: install dependencies",
    ):
        return False
    try:
        if need_torch:
            import PyTorchUtils

            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
        # A list, so that no path is split or unescaped by the shell-style parsing of a single string.
        slicer.util.pip_install([*LOCAL_REQUIREMENTS, "-c", keep_slicer_packages()])
        os.environ["SAM2_BUILD_CUDA"] = "0"
        slicer.util.pip_install(["--no-build-isolation", "--no-deps", SAM2_REQUIREMENT])
    except Exception as exc:  # PyTorchUtils and pip raise several kinds; all end in the same dialog
        logging.exception("IBISAgent: installing dependencies failed")
        slicer.util.errorDisplay(
            f"IBISAgent could not install what it needs to run on this computer: {exc}\n\nCheck the network "
            "connection and try again (details in the Python console), or choose a server instead."
        )
        return False
    return True


def keep_slicer_packages():
    """A pip constraints file pinning the packages Slicer ships, so installs never replace them."""
    from importlib.metadata import PackageNotFoundError, version

    path = os.path.join(slicer.app.temporaryPath, "ibisagent-constraints.txt")
    pins = []
    for package in ("numpy", "SimpleITK", "requests"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(pins) + "\n")
    return path


def consent_to_upload(url):
    """Asks once per server before images leave this computer for a non-local host."""
    from IBISAgentLib.remote.client import is_loopback

    host = urlparse(url).hostname or ""
    if is_loopback(host):
        return True
    stored = qt.QSettings()
    key = settings.PREFIX + "consent/" + host
    if stored.value(key, "") == "yes":
        return True
    if not slicer.util.confirmOkCancelDisplay(
        f"IBISAgent will send the selected volume and your instruction to the server {host}. Make sure this is "
        "allowed for these images. Continue?",
        "IBISAgent: send images to a server",
    ):
        return False
    stored.setValue(key, "yes")
    return True

"""Retake README's browser screenshots (Resources/Screenshots/web-1280x800.png and web-1920x1080.png): the web
app on a block of the MNI brain with replayed model outputs and the weight-free segmenter (``classical``: no
weights needed, and its masks follow the image), after a run, a correction, a brush stroke and a propagation,
in Debian's chromium at both sizes, the panel at its top (the run controls and the reasoning).

    .venv/bin/python scripts/screenshots.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))

import SimpleITK as sitk  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402
from test_web import CHROMIUM, OUTPUTS, served, stroke, view_image  # noqa: E402
from volume_data import mni_crop  # noqa: E402

SIZES = ((1280, 800), (1920, 1080))
SHOTS = REPO / "Resources" / "Screenshots"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ibisagent-shots-") as folder:
        work = Path(folder)
        volume = work / "brain.nii.gz"
        sitk.WriteImage(mni_crop((64, 72, 24), (66, 80, 78)), str(volume))
        replay = work / "outputs.json"
        replay.write_text(json.dumps(OUTPUTS))
        args = (str(volume), "--mllm", f"replay:{replay}", "--sam2", "classical", "--device", "cpu")
        with served(*args, "--out", str(work / "out"), cwd=work) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": SIZES[0][0], "height": SIZES[0][1]})
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)
            page.goto(url)
            red = view_image(page, "Red")
            expect(red).to_be_visible()
            page.wait_for_timeout(1500)
            page.get_by_label("Instruction").fill("segment the white matter")
            page.get_by_role("button", name="Run", exact=True).click()
            log = page.get_by_role("log", name="Reasoning")
            expect(log).to_contain_text("stopped: terminate — Done.")
            page.get_by_role("button", name="Add point").click()
            box = red.bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.30, box["y"] + box["height"] * 0.45)
            expect(log).to_contain_text("4. you: positive click 3+")
            page.get_by_role("button", name="Add point").click()
            page.get_by_role("button", name="Propagate", exact=True).click()
            expect(log).to_contain_text("propagated through slices")
            page.get_by_role("button", name="Paint").click()
            stroke(page, red, (0.62, 0.25), (0.68, 0.25), (0.68, 0.32))
            page.get_by_role("button", name="Paint").click()  # the tool off again: no brush outline in the view
            page.get_by_label("Instruction").scroll_into_view_if_needed()
            page.wait_for_timeout(2000)
            for width, height in SIZES:
                page.set_viewport_size({"width": width, "height": height})
                page.wait_for_timeout(4000)  # the views refit to their new size
                path = SHOTS / f"web-{width}x{height}.png"
                page.screenshot(path=str(path))
                print(f"wrote {path.relative_to(REPO)}")
            browser.close()


if __name__ == "__main__":
    main()

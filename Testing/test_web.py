"""The web app in a real browser (Debian's chromium through Playwright) against a real `ibisagent web` on
127.0.0.1, with the tiny MedSAM2 and replayed model outputs, on a block of the real MNI T1 brain."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install 'ibisagent[web]')")
pytest.importorskip("playwright", reason="playwright is not installed (the test extra)")
CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402
from volume_data import mni_crop  # noqa: E402

OUTPUTS = [
    "<think>white matter here</think><action>Positive Point (0.5000, 0.5000)</action>",
    "<think>too much</think><action>Negative Point (0.2000, 0.3000)</action>",
    "<think>good</think><action>Terminate</action><answer>Done.</answer>",
]
expect.set_options(timeout=60_000)  # the first Run loads the models (torch import included)


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_models):
    folder = tmp_path_factory.mktemp("web")
    volume = folder / "brain.nii.gz"
    sitk.WriteImage(mni_crop((64, 72, 24), (66, 80, 78)), str(volume))
    flat = folder / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(48 * 40, dtype=np.int16).reshape(40, 48)), str(flat))
    broken = folder / "broken.nii.gz"
    broken.write_bytes(b"this is not a volume")
    replay = folder / "outputs.json"
    replay.write_text(json.dumps(OUTPUTS))
    return {
        "folder": folder,
        "sam2": tiny_models[1],
        "volume": volume,
        "flat": flat,
        "broken": broken,
        "replay": replay,
    }


def start_server(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    log = open(cwd / "server.log", "w")  # noqa: SIM115 (the process writes it until stop_server)
    process = subprocess.Popen(
        [sys.executable, "-m", "IBISAgentLib", "web", *args, "--port", "0"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise RuntimeError(f"the server stopped: {(cwd / 'server.log').read_text(encoding='utf-8')[-2000:]}")
        match = re.search(r"IBISAgent web app: open (http://127\.0\.0\.1:\d+/)", line)
        if match:
            return process, match.group(1)
    process.kill()
    raise RuntimeError("the server did not start within 120 s")


@contextlib.contextmanager
def served(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """A running `ibisagent web` for the length of the block; its URL."""
    server, url = start_server(*args, cwd=cwd, env=env)
    try:
        yield url
    finally:
        stop_server(server)


def stop_server(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--headless=new", "--disable-dev-shm-usage"],
        )
        yield browser
        browser.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def view_image(page, name: str):
    return page.locator(f"div:has(> span.ia-view-{name}) img.image-display-area")


def log_text(page) -> str:
    return page.get_by_role("log", name="Reasoning").inner_text()


def mask_area(page) -> int:
    return int(re.search(r"mask on that slice: (\d+) px", page.locator(".ia-mask-area").inner_text()).group(1))


def alert(page):
    return page.get_by_role("alert")


def changed_pixels(png: bytes, other: bytes) -> int:
    """How many pixels of two frames of a view differ clearly (more than a rounding of the colours)."""
    return int((np.abs(pixels(png) - pixels(other)).max(axis=2) > 40).sum())


def frame_after(page, name: str, since_png: bytes, timeout: float = 20.0) -> bytes:
    """The view's image once it differs from ``since_png`` and has settled: one edit can reach a view in more
    than one frame (the edit, then its markers; the slice views are drawn again when the 3D surface changes)."""
    deadline = time.monotonic() + timeout
    png = since_png
    while time.monotonic() < deadline and png == since_png:
        page.wait_for_timeout(100)
        png = view_image(page, name).screenshot()
    while time.monotonic() < deadline:
        page.wait_for_timeout(400)
        settled, png = png, view_image(page, name).screenshot()
        if png == settled and png != since_png:
            return png
    raise AssertionError(f"the {name} view did not change and settle")


@contextlib.contextmanager
def run_button_stays_run(page) -> Iterator[None]:
    """A quick command (a correction, an undo) leaves the panel as it is: Run does not flash to Cancel and
    back (every label the button shows during the block is recorded)."""
    page.get_by_role("button", name="Run", exact=True).evaluate(
        """button => {
          window.__runLabels = [];
          new MutationObserver(() => window.__runLabels.push(button.textContent.trim()))
            .observe(button, {subtree: true, childList: true, characterData: true});
        }"""
    )
    yield
    page.wait_for_timeout(500)  # past the time a slow command would be shown busy
    assert "Cancel" not in page.evaluate("window.__runLabels")


def _voxels(text: str) -> int:
    return int(re.search(r"\((\d+) voxels", text).group(1))


def until(condition, timeout: float = 60.0) -> None:
    """Wait for something the page causes outside it (a file written, the log's count of a line)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def pixels(png: bytes) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)


@contextlib.contextmanager
def opened_on_the_volume(data, page, out: Path, cwd: Path) -> Iterator[object]:
    """A page on `ibisagent web` with the test volume and the replayed model; the agent's (Red) view, fitted."""
    with served(
        str(data["volume"]), "--mllm", f"replay:{data['replay']}", "--sam2", str(data["sam2"]), "--device", "cpu",
        "--out", str(out), cwd=cwd,
    ) as url:  # fmt: skip
        page.goto(url)
        expect(page.get_by_text("Volume: brain.nii.gz")).to_be_visible()
        red = view_image(page, "Red")
        expect(red).to_be_visible()
        page.wait_for_timeout(1500)  # views fitted at their final size
        yield red


def test_run_correct_undo_propagate_save(data, page, tmp_path):
    out = tmp_path / "out"
    with opened_on_the_volume(data, page, out, tmp_path) as red:
        empty_3d = view_image(page, "ThreeD").screenshot()

        page.get_by_label("Instruction").fill("segment the white matter")
        page.get_by_role("button", name="Run", exact=True).click()
        log = page.get_by_role("log", name="Reasoning")
        expect(log).to_contain_text(re.compile(r"1\. agent: positive click 1\+ on .* px — white matter here"))
        expect(log).to_contain_text(re.compile(r"2\. agent: negative click 2− on .* px — too much"))
        expect(log).to_contain_text("stopped: terminate — Done.")
        expect(page.get_by_role("status")).to_have_text("Stopped: terminate — Done.")
        markers = page.get_by_role("list", name="Markers")
        expect(markers).to_contain_text("1+ (agent)")
        expect(markers).to_contain_text("2− (agent)")
        # The segment is named after the instruction and is the target now.
        expect(page.get_by_text("segment the white matter (IBISAgent segmentation)")).to_be_visible()
        after_run = mask_area(page)
        assert after_run > 0
        page.wait_for_timeout(800)
        page.screenshot(path=str(tmp_path / "after_run.png"))
        before_click = red.screenshot()

        # A correction on the agent's slice, where the volume is (left of the centre, mid-height).
        page.get_by_role("button", name="Add point").click()
        box = red.bounding_box()
        with run_button_stays_run(page):
            page.mouse.click(box["x"] + box["width"] * 0.30, box["y"] + box["height"] * 0.45)
            you_clicked = r"4\. you: positive click 3\+ on axial slice \d+, voxel \(\d+, \d+, \d+\): \d+ -> \d+ px"
            expect(log).to_contain_text(re.compile(you_clicked))
            expect(markers).to_contain_text("3+ (user)")
        corrected = mask_area(page)
        assert corrected != after_run
        after_click = frame_after(page, "Red", before_click)
        assert np.abs(pixels(after_click) - pixels(before_click)).max() > 40

        # Undo takes the correction back: the mask, the markers and the view.
        page.get_by_role("button", name="Add point").click()  # correction mode off
        with run_button_stays_run(page):
            page.get_by_role("button", name="Undo").click()
            expect(log).to_contain_text("undone: step 4 (marker 3+)")
        expect(markers).not_to_contain_text("3+")
        assert mask_area(page) == after_run
        after_undo = frame_after(page, "Red", after_click)
        assert np.abs(pixels(after_undo) - pixels(before_click)).mean() < 1.0

        # Propagate through two slices either side of the agent's slice.
        where = page.locator(".ia-mask-area").inner_text()
        index = int(re.search(r"axial slice (\d+)", where).group(1))
        page.get_by_label("First slice").fill(str(index - 2))
        page.get_by_label("Last slice").fill(str(index + 2))
        page.get_by_label("Stop after empty").fill("0")
        one_slice_3d = pixels(view_image(page, "ThreeD").screenshot())
        page.get_by_role("button", name="Propagate", exact=True).click()
        expect(log).to_contain_text(f"propagated through slices {index - 2}–{index + 2}")
        deadline = time.monotonic() + 30  # the surface is built in the background once the edits settle
        while True:
            with_surface = pixels(view_image(page, "ThreeD").screenshot())
            changed = (np.abs(with_surface - pixels(empty_3d)).max(axis=2) > 40).mean()
            grown = (np.abs(with_surface - one_slice_3d).max(axis=2) > 40).mean()
            if (changed > 0.005 and grown > 0.002) or time.monotonic() > deadline:
                break
            page.wait_for_timeout(250)
        # The five-slice surface covers 1-6 % of the view (the camera was fitted to the first surface, after the
        # run, a moment earlier or later), and differs from the key slice's surface before it.
        assert changed > 0.005, f"the 3D view shows no segment surface ({changed:.1%} of its pixels changed)"
        assert grown > 0.002, f"the 3D surface did not follow the propagation ({grown:.1%} of its pixels changed)"

        # Save: the four files, their voxels the session's segment.
        page.get_by_role("button", name="Save").click()
        saved = page.get_by_text(re.compile(r"Saved 4 files to .* \((\d+) voxels in the segment\)"))
        expect(saved).to_be_visible()
        voxels = int(re.search(r"\((\d+) voxels", saved.inner_text()).group(1))
        stem = "segment_the_white_matter"
        labelmap = sitk.ReadImage(str(out / f"{stem}.nii.gz"))
        source = sitk.ReadImage(str(data["volume"]))
        assert labelmap.GetSize() == source.GetSize()
        np.testing.assert_allclose(labelmap.GetOrigin(), source.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(labelmap.GetDirection(), source.GetDirection(), atol=1e-6)
        mask = sitk.GetArrayFromImage(labelmap).astype(bool)
        assert int(mask.sum()) == voxels > 0
        assert all(mask[k].any() for k in range(index - 2, index + 3))
        assert not mask[: index - 2].any() and not mask[index + 3 :].any()
        trace = json.loads((out / f"{stem}_trace.json").read_text(encoding="utf-8"))
        assert [s["source"] for s in trace["steps"]] == ["agent", "agent", "agent"]
        assert trace["steps"][-1]["mask_area"] == after_run
        assert int(mask[index].sum()) == after_run  # propagation keeps the agent's slice as the session left it
        check_bundle_and_seg(out / f"{stem}_scene.mrb", out / f"{stem}.seg.nrrd", mask, tmp_path)

        # The same files as browser downloads.
        with page.expect_download() as download:
            page.get_by_role("button", name=f"{stem}.nii.gz").click()
        assert Path(download.value.path()).read_bytes() == (out / f"{stem}.nii.gz").read_bytes()


def test_step_continue_remove_point_and_the_largest_part(data, page, tmp_path):
    out = tmp_path / "out"
    with opened_on_the_volume(data, page, out, tmp_path) as red:
        page.get_by_label("Instruction").fill("segment the white matter")
        log = page.get_by_role("log", name="Reasoning")

        # Step: one turn, then the agent waits.
        page.get_by_role("button", name="Step", exact=True).click()
        expect(log).to_contain_text(re.compile(r"1\. agent: positive click 1\+ .* — white matter here"))
        expect(page.get_by_role("button", name="Continue")).to_be_enabled()
        assert "2. agent" not in log_text(page)
        # Continue: the remaining turns, on the same session.
        page.get_by_role("button", name="Continue").click()
        expect(log).to_contain_text("stopped: terminate — Done.")
        assert re.search(r"2\. agent: negative click 2− .* — too much", log_text(page))
        after_run = mask_area(page)

        # Remove point: a negative correction where the mask is, on the agent's slice.
        page.get_by_role("button", name="Remove point").click()
        box = red.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.30, box["y"] + box["height"] * 0.45)
        expect(log).to_contain_text("4. you: negative click 3−")
        expect(page.get_by_role("list", name="Markers")).to_contain_text("3− (user)")
        assert mask_area(page) != after_run
        page.get_by_role("button", name="Remove point").click()  # correction mode off

        # Propagate keeping only the largest connected part: what is saved is one piece.
        index = int(re.search(r"axial slice (\d+)", page.locator(".ia-mask-area").inner_text()).group(1))
        page.get_by_label("First slice").fill(str(index - 3))
        page.get_by_label("Last slice").fill(str(index + 3))
        page.get_by_label("Stop after empty").fill("0")
        saved, pieces, voxels = out / "segment_the_white_matter.nii.gz", [], [None]
        message = page.get_by_text(re.compile(r"Saved 4 files to .* \((\d+) voxels in the segment\)"))
        for largest in (False, True):
            propagated = log_text(page).count("propagated through slices")
            page.get_by_label("Keep the largest connected part").set_checked(largest)
            page.get_by_role("button", name="Propagate", exact=True).click()
            until(lambda before=propagated: log_text(page).count("propagated through slices") > before)
            page.get_by_role("button", name="Save").click()
            # Written when the message names a new voxel count (keeping one part drops voxels).
            until(lambda: message.count() == 1 and _voxels(message.inner_text()) != voxels[-1])
            voxels.append(_voxels(message.inner_text()))
            pieces.append(ndimage.label(sitk.GetArrayFromImage(sitk.ReadImage(str(saved))))[1])
        assert pieces[0] > 1 and pieces[1] == 1  # the tiny model's propagation is in pieces; the option keeps one


def test_propagation_shows_progress_and_cancel_puts_the_segment_back(data, page, tmp_path):
    out = tmp_path / "out"
    with opened_on_the_volume(data, page, out, tmp_path):
        page.get_by_label("Instruction").fill("segment the white matter")
        page.get_by_role("button", name="Run", exact=True).click()
        log = page.get_by_role("log", name="Reasoning")
        expect(log).to_contain_text("stopped: terminate — Done.")
        page.get_by_label("First slice").fill("0")
        page.get_by_label("Last slice").fill("23")
        page.get_by_label("Stop after empty").fill("0")
        page.get_by_role("button", name="Propagate", exact=True).click()
        expect(page.get_by_role("progressbar", name="Propagation progress")).to_be_visible()
        expect(page.get_by_role("status")).to_contain_text(re.compile(r"\d+ of 24 slices"))
        page.get_by_role("button", name="Cancel propagation").click()
        expect(log).to_contain_text("put back as it was: propagation cancelled")
        assert "propagated through" not in log_text(page)
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_text(re.compile(r"Saved 4 files to"))).to_be_visible()
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segment_the_white_matter.nii.gz"))).astype(bool)
        index = int(re.search(r"axial slice (\d+)", page.locator(".ia-mask-area").inner_text()).group(1))
        assert mask[index].any() and not np.delete(mask, index, axis=0).any()  # the key slice alone, as before


def check_bundle_and_seg(mrb: Path, seg_nrrd: Path, mask: np.ndarray, tmp_path: Path) -> None:
    """The scene bundle and the .seg.nrrd hold the same voxels as the NIfTI labelmap."""
    import slicer

    from IBISAgentMRML import load_mrb, new_scene, segment_array

    headless = new_scene(tmp_path / "cache")
    load_mrb(headless.scene, mrb)
    volume = headless.scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    segmentation = headless.scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("segment the white matter")
    np.testing.assert_array_equal(segment_array(segmentation, segment_id, volume), mask)
    assert headless.scene.GetFirstNodeByName("IBISAgent trace") is not None
    labels = {
        headless.scene.GetNthNodeByClass(i, "vtkMRMLMarkupsFiducialNode").GetNthControlPointLabel(n)
        for i in range(headless.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode"))
        for n in range(headless.scene.GetNthNodeByClass(i, "vtkMRMLMarkupsFiducialNode").GetNumberOfControlPoints())
    }
    assert labels == {"1+", "2−"}
    loaded = slicer.vtkMRMLSegmentationNode()
    headless.scene.AddNode(loaded)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(seg_nrrd))
    assert storage.ReadData(loaded)
    loaded_id = loaded.GetSegmentation().GetSegmentIdBySegmentName("segment the white matter")
    np.testing.assert_array_equal(segment_array(loaded, loaded_id, volume), mask)
    headless.scene.Clear(True)


def test_bad_input_is_a_message_and_the_app_keeps_working(data, page, tmp_path):
    with served(
        str(data["volume"]), "--mllm", f"replay:{data['replay']}", "--sam2", str(data["sam2"]), "--device", "cpu",
        "--out", str(tmp_path / "out"), cwd=tmp_path,
    ) as url:  # fmt: skip
        page.goto(url)
        expect(page.get_by_text("Volume: brain.nii.gz")).to_be_visible()
        page.wait_for_timeout(1000)
        run = page.get_by_role("button", name="Run", exact=True)

        run.click()  # no instruction
        expect(alert(page)).to_contain_text("Type what to segment")

        upload = page.locator("input[type=file]")
        upload.set_input_files(str(data["broken"]))
        expect(alert(page)).to_contain_text("Could not read broken.nii.gz as a volume")
        upload.set_input_files(str(data["flat"]))
        expect(alert(page)).to_contain_text("is a 2D image")
        expect(page.get_by_text("Volume: brain.nii.gz")).to_be_visible()  # the volume stays

        page.get_by_label("Instruction").fill("segment the white matter")
        run.click()
        log = page.get_by_role("log", name="Reasoning")
        expect(log).to_contain_text("stopped: terminate")
        before = mask_area(page)

        page.get_by_role("button", name="Add point").click()
        yellow = view_image(page, "Yellow").bounding_box()
        page.mouse.click(yellow["x"] + yellow["width"] / 2, yellow["y"] + yellow["height"] / 2)
        expect(alert(page)).to_contain_text("Corrections go on the Red (axial) view")
        red = view_image(page, "Red").bounding_box()
        page.mouse.click(red["x"] + red["width"] / 2, red["y"] + 5)  # the black band above the volume
        expect(alert(page)).to_contain_text("outside the volume")
        assert mask_area(page) == before

        # Still working: a correction on the slice goes through.
        page.mouse.click(red["x"] + red["width"] * 0.30, red["y"] + red["height"] * 0.45)
        expect(log).to_contain_text("4. you: positive click")
        expect(alert(page)).to_have_count(0)


def test_volumes_open_from_the_page_nifti_and_a_dicom_series(data, page, tmp_path):
    from volume_data import ct_phantom, write_dicom_series

    series = tmp_path / "series"
    ct = sitk.GetImageFromArray(ct_phantom((6, 40, 48)))
    ct.SetSpacing((0.8, 0.8, 2.5))
    write_dicom_series(ct, series)
    with served("--mllm", f"replay:{data['replay']}", "--sam2", str(data["sam2"]), "--device", "cpu",
                "--out", str(tmp_path / "out"), cwd=tmp_path) as url:  # fmt: skip
        page.goto(url)
        expect(page.get_by_text("Volume: none: open one below")).to_be_visible()
        upload = page.locator("input[type=file]")
        upload.set_input_files(str(data["volume"]))
        expect(page.get_by_text("Volume: brain.nii.gz")).to_be_visible()
        upload.set_input_files(sorted(str(p) for p in series.iterdir()))
        expect(page.get_by_text("Volume: brain.nii.gz")).to_have_count(0)
        expect(alert(page)).to_have_count(0)
        page.get_by_label("Instruction").fill("segment the bone")
        page.get_by_label("Max turns").fill("1")
        page.get_by_role("button", name="Run", exact=True).click()
        expect(page.get_by_role("log", name="Reasoning")).to_contain_text("stopped: max_turns")
        expect(page.get_by_text(re.compile(r"Agent on axial slice \d+"))).to_be_visible()


def test_images_leave_for_another_machine_only_after_consent(data, page, tmp_path):
    with served(str(data["volume"]), "--server", "https://ibis.hospital.example/", cwd=tmp_path) as url:
        page.goto(url)
        expect(page.get_by_text("Volume: brain.nii.gz")).to_be_visible()
        page.get_by_label("Instruction").fill("segment the white matter")
        page.get_by_role("button", name="Run", exact=True).click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("to the server ibis.hospital.example")
        dialog.get_by_role("button", name="Do not send").click()
        expect(alert(page)).to_contain_text("Nothing was sent to the server.")
        expect(page.get_by_role("dialog")).to_have_count(0)
        expect(page.get_by_role("log", name="Reasoning")).not_to_contain_text("error")  # nothing was started


def test_a_server_that_is_gone_is_a_message(data, page, tmp_path):
    with served(str(data["volume"]), "--server", "http://127.0.0.1:9/", cwd=tmp_path) as url:
        page.goto(url)
        expect(page.get_by_text("Models: server http://127.0.0.1:9/")).to_be_visible()
        page.get_by_label("Instruction").fill("segment the white matter")
        page.get_by_role("button", name="Run", exact=True).click()
        expect(alert(page)).to_be_visible()
        expect(page.get_by_role("log", name="Reasoning")).to_contain_text("error:")
        expect(page.get_by_role("button", name="Run", exact=True)).to_be_enabled()  # ready for the next try


def test_a_non_loopback_bind_needs_an_access_key(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "IBISAgentLib", "web", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "--access-key-file" in result.stderr and "Traceback" not in result.stderr


def _upload(page, files: list[tuple[str, bytes]]) -> None:
    """Files sent through the page's own file input, under any names (as a page's script could send them)."""
    page.locator("input[type=file]").set_input_files(
        [{"name": name, "mimeType": "application/octet-stream", "buffer": data} for name, data in files]
    )


def _nifti_bomb() -> bytes:
    import gzip
    import struct

    header = bytearray(352)  # NIfTI-1, uint8, 1024 x 1024 x 1100 declared
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, 1024, 1024, 1100, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 2, 8)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    return gzip.compress(bytes(header) + bytes(1 << 16))


def test_uploads_cannot_reach_files_outside_the_upload(data, page, tmp_path):
    """Names that climb out of the upload folder, headers that name a file on the server, a truncated file, a
    header declaring a huge volume and two DICOM series are refused (or, for names, reduced to a plain name);
    the open volume stays."""
    from volume_data import ct_phantom, write_dicom_series

    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(256)) * 64)  # 16384 bytes: a 16 x 16 x 32 uint16 "volume" if read
    header = "ObjectType = Image\nNDims = 3\nDimSize = 16 16 32\nElementType = MET_USHORT\nElementDataFile = {}\n"
    nrrd = "NRRD0004\ntype: uint16\ndimension: 3\nsizes: 16 16 32\nencoding: raw\nendian: little\ndata file: {}\n\n"
    whole = data["volume"].read_bytes()
    series = []
    for name in ("a", "b"):
        write_dicom_series(sitk.GetImageFromArray(ct_phantom((3, 16, 16))), tmp_path / name)
        series += [(f"{name}_{p.name}", p.read_bytes()) for p in sorted((tmp_path / name).iterdir())]
    import gzip

    truncated = gzip.compress(gzip.decompress(whole)[:-500])
    with served(str(data["volume"]), "--mllm", f"replay:{data['replay']}", "--sam2", str(data["sam2"]),
                "--device", "cpu", "--out", str(tmp_path / "out"), cwd=tmp_path) as url:  # fmt: skip
        page.goto(url)
        expect(page.get_by_text("Volume: brain.nii.gz")).to_be_visible()
        refusals = [
            ([("evil.mhd", header.format(secret).encode())], "reads its voxels from"),
            ([("evil.nhdr", nrrd.format(secret).encode())], "reads its voxels from"),
            ([("evil.mhd", header.format("../secret.raw").encode())], "reads its voxels from"),
            ([("alone.mhd", header.format("alone.raw").encode())], "which was not uploaded with it"),
            ([("cut.nii.gz", truncated)], "the file is truncated"),
            ([("bomb.nii.gz", _nifti_bomb())], "more than the limit of 268,435,456"),
            (series, "holds 2 DICOM series"),
            ([("notes.txt", b"hello")], "no volume file and no DICOM series"),
        ]
        for files, reason in refusals:
            _upload(page, files)
            expect(alert(page)).to_contain_text(reason)
            expect(page.get_by_text("Volume: brain.nii.gz")).to_be_visible()
            page.locator(".ia-message").get_by_role("button", name="Close").click()
        # A header with its data file in the same upload is fine, and so is a name reduced to its last part.
        voxels = sitk.GetImageFromArray(ct_phantom((4, 16, 16)).astype(np.uint16))
        sitk.WriteImage(voxels, str(tmp_path / "pair.mhd"))
        _upload(page, [("pair.mhd", (tmp_path / "pair.mhd").read_bytes()),
                       ("pair.raw", (tmp_path / "pair.raw").read_bytes())])  # fmt: skip
        expect(page.get_by_text("Volume: pair")).to_be_visible()
        escape = f"../../../../../../../..{tmp_path}/escaped.nii.gz"
        _upload(page, [(escape, whole)])
        expect(page.get_by_text("Volume: escaped")).to_be_visible()
        assert not (tmp_path / "escaped.nii.gz").exists()


def test_the_shared_scene_warning_counts_the_tabs_open_now(data, browser, tmp_path):
    """Two tabs: the warning shows; one tab closed without its beforeunload handler running (as a crashed or
    killed tab): it goes at once, not seconds later."""
    warning = "All tabs of this page share one scene"
    with served(str(data["volume"]), "--mllm", f"replay:{data['replay']}", "--sam2", str(data["sam2"]),
                "--device", "cpu", cwd=tmp_path) as url:  # fmt: skip
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        first, second = context.new_page(), context.new_page()
        first.goto(url)
        expect(first.get_by_text("Volume: brain.nii.gz")).to_be_visible()
        expect(first.get_by_text(warning)).to_have_count(0)
        second.goto(url)
        expect(second.get_by_text("Volume: brain.nii.gz")).to_be_visible()
        expect(first.get_by_text(warning)).to_be_visible()
        second.close(run_before_unload=False)
        expect(first.get_by_text(warning)).to_have_count(0, timeout=3000)
        context.close()


def test_an_access_key_guards_the_page_on_loopback_too(data, page, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("Tulip-Sesame-7\n")
    server, url = start_server("--access-key-file", str(key_file), "--mllm", f"replay:{data['replay']}",
                               "--sam2", str(data["sam2"]), cwd=tmp_path)  # fmt: skip
    try:
        page.goto(url)  # without the key the app never connects
        page.wait_for_timeout(4000)
        expect(page.get_by_text("Volume:")).to_have_count(0)
        page.goto(url + "?secret=Tulip-Sesame-7")
        expect(page.get_by_text("Volume: none: open one below")).to_be_visible()
    finally:
        stop_server(server)


def test_find_then_propagate_with_the_check_and_go_to_a_flagged_slice(page, tmp_path):
    """Find: the agent searches the axis and works on the slice it found, which the agent's view then shows;
    Propagate with Check: a strip of the propagated slices, flagged ones red; a click on one moves the view
    there. The weight-free segmenter and the oracle policy on a phantom whose truth is known."""
    from test_volume_agent import _phantom

    volume, reference, lesion, _ = _phantom(tmp_path)
    key = int(np.argmax(lesion.sum(axis=(1, 2))))
    with served(str(volume), "--mllm", f"oracle:{reference}", "--segmenter", "classical", "--device", "cpu",
                "--out", str(tmp_path / "out"), cwd=tmp_path) as url:  # fmt: skip
        page.set_viewport_size({"width": 1600, "height": 1000})
        page.goto(url)
        expect(page.get_by_text("Volume: phantom")).to_be_visible()
        page.get_by_label("Instruction").fill("segment the lesion")
        page.get_by_role("button", name="Find").click()
        log = page.get_by_role("log", name="Reasoning")
        expect(log).to_contain_text("looked at slice")
        expect(log).to_contain_text("stopped: terminate")
        expect(page.get_by_text(re.compile(rf"Agent on axial slice {key}\b"))).to_be_visible()
        page.get_by_label("Check: let the agent re-check slices that look wrong").check()
        page.get_by_role("button", name="Propagate", exact=True).click()
        strip = page.get_by_role("list", name="Propagated slices")
        expect(strip).to_be_visible()
        expect(log).to_contain_text("propagated through slices")
        items = strip.get_by_role("listitem")
        assert items.count() >= np.count_nonzero(lesion.any(axis=(1, 2)))  # it stops 3 empty slices past the target
        flagged = strip.locator(".ia-flagged")
        assert flagged.count() >= 1
        label = flagged.first.get_attribute("aria-label")
        index = int(re.match(r"slice (\d+)", label).group(1))
        page.wait_for_timeout(1000)
        before = view_image(page, "Red").screenshot()
        flagged.first.click()
        expect(page.get_by_text(f"(showing axial slice {index})")).to_be_visible()
        frame_after(page, "Red", before)  # the view moved to that slice
        page.screenshot(path=str(tmp_path / "web-check.png"))
        if os.environ.get("IBISAGENT_SCREENSHOTS"):
            shutil.copy(tmp_path / "web-check.png", os.environ["IBISAGENT_SCREENSHOTS"])


def test_the_saved_labelmap_is_on_the_opened_files_grid(data, page, tmp_path):
    """A volume whose k axis runs against RAS: Slicer reorders its voxels, the saved NIfTI comes back on the
    file's own grid (size, origin, spacing, direction, voxel order), as pyradiomics and nnU-Net require."""
    flipped = sitk.ReadImage(str(data["volume"]))
    flipped.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))  # Slicer reads this with its k axis reversed
    sitk.WriteImage(flipped, str(tmp_path / "flipped.nii.gz"))
    out = tmp_path / "out"
    with served(str(tmp_path / "flipped.nii.gz"), "--mllm", f"replay:{data['replay']}", "--sam2", str(data["sam2"]),
                "--device", "cpu", "--out", str(out), cwd=tmp_path) as url:  # fmt: skip
        page.goto(url)
        expect(page.get_by_text("Volume: flipped")).to_be_visible()
        page.get_by_label("Instruction").fill("segment the white matter")
        page.get_by_role("button", name="Run", exact=True).click()
        expect(page.get_by_role("log", name="Reasoning")).to_contain_text("stopped: terminate")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_text(re.compile(r"Saved 4 files"))).to_be_visible()
    saved = sitk.ReadImage(str(out / "segment_the_white_matter.nii.gz"))
    assert saved.GetSize() == flipped.GetSize()
    for ours, theirs in ((saved.GetOrigin(), flipped.GetOrigin()), (saved.GetSpacing(), flipped.GetSpacing()),
                         (saved.GetDirection(), flipped.GetDirection())):  # fmt: skip
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    segmentation = sitk.ReadImage(str(out / "segment_the_white_matter.seg.nrrd"))  # written by Slicer, its grid
    on_file_grid = sitk.Resample(segmentation, flipped, sitk.Transform(), sitk.sitkNearestNeighbor)
    labels = sitk.GetArrayFromImage(saved)
    assert labels.any() and np.array_equal(labels > 0, sitk.GetArrayFromImage(on_file_grid) > 0)


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the select labelled ``label`` (a vuetify menu of options)."""
    page.locator(".v-select", has=page.get_by_label(label)).click()
    page.get_by_role("option", name=option, exact=True).click()


def caption(page, view: str) -> str:
    return page.locator(f".ia-caption-{view}").inner_text()


def test_views_say_their_slice_the_window_is_the_agents_and_refusals_lose_nothing(data, page, tmp_path):
    """Items the viewer owes a radiologist, at 1280 x 800: each view names its slice in the numbering the
    Propagate range and the log use, with the patient directions at its edges; a window preset is what the
    agent is given (the trace says which) and a drag sets the window as in Slicer; a rejected upload, Max turns
    0 and a bad range leave the session, markers and log as they were; a reload shows the same slice."""
    page.set_viewport_size({"width": 1280, "height": 800})
    out = tmp_path / "out"
    with opened_on_the_volume(data, page, out, tmp_path) as red:
        expect(page.locator(".ia-caption-Red")).to_have_text("Red · axial · slice 12 of 0–23")
        expect(page.locator(".ia-caption-Green")).to_have_text("Green · coronal · slice 36 of 0–71")
        expect(page.locator(".ia-caption-Yellow")).to_have_text(re.compile(r"Yellow · sagittal · slice 3[12] of 0–63"))
        edges = ("left", "right", "top", "bottom")
        letters = [page.locator(f"div:has(> span.ia-view-Red) > .ia-edge-{e}").inner_text() for e in edges]
        assert letters == ["R", "L", "A", "P"]  # radiological convention, as Slicer's axial view

        # A drag sets the window/level (Slicer's widget); the Window control says it is custom now.
        before = page.locator(".ia-window-text").inner_text()
        box = red.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        for n in range(1, 8):
            page.mouse.move(x + 12 * n, y + 6 * n)
            page.wait_for_timeout(40)
        page.mouse.up()
        expect(page.locator(".ia-window-text")).not_to_have_text(before)
        expect(page.get_by_text("Custom (dragged)")).to_be_visible()
        choose(page, "Window", "Brain")
        expect(page.locator(".ia-window-text")).to_have_text("level 40, width 80")

        page.get_by_label("Instruction").fill("segment the white matter")
        page.get_by_role("button", name="Run", exact=True).click()
        log = page.get_by_role("log", name="Reasoning")
        expect(log).to_contain_text("stopped: terminate")
        expect(log).to_contain_text("working on axial slice 12")
        page.get_by_role("button", name="Add point").click()
        page.mouse.click(box["x"] + box["width"] * 0.30, box["y"] + box["height"] * 0.45)
        expect(log).to_contain_text("4. you: positive click 3+ on axial slice 12")
        page.get_by_role("button", name="Add point").click()
        kept, area = log_text(page), mask_area(page)
        markers = page.get_by_role("list", name="Markers")

        def nothing_lost() -> None:
            assert log_text(page) == kept and mask_area(page) == area
            expect(markers).to_contain_text("3+ (user)")
            expect(page.get_by_role("button", name="Undo")).to_be_enabled()

        _upload(page, [("notes.txt", b"not an image")])
        expect(alert(page)).to_contain_text("notes.txt")
        nothing_lost()
        page.get_by_label("Max turns").fill("0")
        page.get_by_role("button", name="Run", exact=True).click()
        expect(alert(page)).to_contain_text("at least 1 turn")
        nothing_lost()
        page.get_by_label("Max turns").fill("20")
        page.get_by_label("Last slice").fill("30")
        page.get_by_role("button", name="Propagate").click()
        expect(alert(page)).to_contain_text("30")
        nothing_lost()

        page.get_by_role("button", name="Save").click()
        expect(page.get_by_text(re.compile(r"Saved \d files"))).to_be_visible()
        trace = json.loads((out / "segment_the_white_matter_trace.json").read_text(encoding="utf-8"))
        assert trace["slice"] == {"axis": "axial", "index": 12, "window": "brain (level 40, width 80)"}

        # The slider moves the view: its caption follows; a reload finds the view, log and markers as they were.
        slider = page.locator("div:has(> span.ia-view-Red) .slice-slider")
        track = slider.bounding_box()
        page.mouse.click(track["x"] + track["width"] * 0.9, track["y"] + track["height"] / 2)
        expect(page.locator(".ia-caption-Red")).not_to_have_text("Red · axial · slice 12 of 0–23")
        moved = caption(page, "Red")
        page.reload()
        expect(page.locator(".ia-caption-Red")).to_have_text(moved)
        page.wait_for_timeout(1500)
        expect(page.locator(".ia-caption-Red")).to_have_text(moved)
        nothing_lost()


def inside_the_viewport(page, *locators) -> None:
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    for locator in locators:
        box = locator.bounding_box()
        assert box is not None, f"{locator} is not shown"
        assert box["x"] >= 0 and box["y"] >= 0, f"{locator} at {box}"
        assert box["x"] + box["width"] <= width and box["y"] + box["height"] <= height, f"{locator} at {box}"


def test_without_weights_the_page_says_so_at_once_and_runs_on_demo_models_within_1280x800(data, page, tmp_path):
    """No weights on the computer: one line says so from the start, with the fetch commands on demand; Run is
    refused at once (no download attempt); a download that cannot happen is one line with details and offers
    the choices again; the demo models run the agent, labelled as meaningless; the controls a run needs and
    the errors stay inside 1280 x 800; slow work (building the models, loading them, saving) shows busy."""
    page.set_viewport_size({"width": 1280, "height": 800})
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "HF_HOME": str(home / "hf"), "IBISAGENT_MLLM": "", "IBISAGENT_SAM2": ""}
    with served(str(data["volume"]), "--device", "cpu", "--out", str(tmp_path / "out"), cwd=tmp_path, env=env) as url:
        page.goto(url)
        missing = page.get_by_text("The models are not on this computer (manglu3935/IBIS:qwen2_5vl-7b-RL, "
                                   "wanglab/MedSAM2:MedSAM2_latest.pt).")  # fmt: skip
        expect(missing).to_be_visible()
        page.get_by_role("button", name="Details").click()
        expect(page.locator(".ia-details")).to_contain_text(
            "hf download manglu3935/IBIS --include 'qwen2_5vl-7b-RL/*' --local-dir DIR"
        )
        expect(page.locator(".ia-details")).to_contain_text("hf download wanglab/MedSAM2 MedSAM2_latest.pt")
        page.get_by_role("dialog").get_by_role("button", name="Close").click()

        page.get_by_label("Instruction").fill("segment the white matter")
        run = page.get_by_role("button", name="Run", exact=True)
        run.click()
        message = page.locator(".ia-message")
        expect(message).to_contain_text("The models are not on this computer: choose Download models or Use demo")
        assert log_text(page).strip() == ""  # nothing was tried

        page.get_by_role("button", name="Download models").click()
        expect(missing).to_be_hidden()
        run.click()
        expect(message).to_contain_text("could not be downloaded")
        assert message.bounding_box()["height"] < 70  # one line (and its Details), whatever the text's length
        expect(missing).to_be_visible()  # offered again
        message.get_by_role("button", name="Details").click()
        expect(page.locator(".ia-details")).to_contain_text("hf download")
        page.get_by_role("dialog").get_by_role("button", name="Close").click()

        page.get_by_role("button", name="Use demo models").click()
        expect(page.get_by_text("Building the demo models")).to_be_visible()
        demo = page.locator(".ia-demo")
        expect(demo).to_contain_text("DEMO: tiny random-weight models", timeout=120_000)
        expect(demo).to_contain_text("meaningless")
        expect(missing).to_be_hidden()
        expect(message).to_be_hidden()  # the download's error is answered
        run.click()
        status = page.get_by_role("status")
        expect(status).to_have_text("Loading the models…")
        expect(page.locator(".ia-busy")).to_be_visible()
        expect(status).to_contain_text("Stopped", timeout=120_000)
        assert len(page.get_by_role("log", name="Reasoning").locator("div").all()) > 1

        page.get_by_label("Instruction").fill("")
        run.click()  # a refusal while a session is open: one line, and every control still on screen
        expect(message).to_contain_text("Type what to segment")
        names = ("Run", "Find", "Step", "Continue", "Undo", "Add point", "Remove point")
        buttons = [page.get_by_role("button", name=n, exact=True) for n in names]
        inside_the_viewport(page, *buttons, status, page.get_by_role("log", name="Reasoning"), message, demo)

        save = page.get_by_role("button", name="Save", exact=True)
        save.evaluate(
            """button => {
              window.__saveBusy = false;
              new MutationObserver(() => window.__saveBusy ||= button.classList.contains('v-btn--loading'))
                .observe(button, {attributes: true});
            }"""
        )
        save.click()
        expect(page.get_by_text(re.compile(r"Saved \d+ files"))).to_be_visible()
        assert page.evaluate("window.__saveBusy")


def voxels_in_target(page) -> int:
    text = page.locator(".ia-voxels").inner_text()
    return int(re.search(r"([\d,]+) voxels", text).group(1).replace(",", ""))


def stroke(page, view, *points: tuple[float, float]) -> None:
    """A left drag through ``points`` (fractions of the view's width and height)."""
    box = view.bounding_box()
    at = [(box["x"] + box["width"] * x, box["y"] + box["height"] * y) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for point in at[1:]:
        page.mouse.move(*point, steps=5)
    page.mouse.up()


def test_hand_edits_the_segment_list_and_the_agent_share_one_undo(data, page, tmp_path):
    """Paint, Islands, Erase, Scissors and the segment list edit the target by hand; Undo takes back the latest
    edit, whoever made it (a stroke, then the agent's step with its marker and log), and brings a deleted
    segment back."""
    with opened_on_the_volume(data, page, tmp_path / "out", tmp_path) as red:
        page.get_by_label("Instruction").fill("segment the white matter")
        page.get_by_role("button", name="Run", exact=True).click()
        log = page.get_by_role("log", name="Reasoning")
        expect(log).to_contain_text("stopped: terminate — Done.")
        until(lambda: voxels_in_target(page) > 0, timeout=20)  # the count follows the views and the panel
        after_run = voxels_in_target(page)
        page.wait_for_timeout(1000)
        before_paint = red.screenshot()

        page.get_by_role("button", name="Paint").click()
        page.get_by_label("Brush (mm)").fill("8")
        stroke(page, red, (0.62, 0.25), (0.68, 0.25), (0.68, 0.32))
        until(lambda: voxels_in_target(page) > after_run, timeout=20)
        painted = voxels_in_target(page)
        painted_frame = frame_after(page, "Red", before_paint)
        stroke(page, red, (0.30, 0.80), (0.33, 0.80))  # a second, smaller part elsewhere
        until(lambda: voxels_in_target(page) > painted, timeout=20)
        two_parts = voxels_in_target(page)

        page.get_by_role("button", name="Keep largest part").click()
        until(lambda: voxels_in_target(page) < two_parts, timeout=20)
        largest = voxels_in_target(page)

        page.get_by_role("button", name="Erase").click()
        stroke(page, red, (0.62, 0.25), (0.68, 0.25))
        until(lambda: voxels_in_target(page) < largest, timeout=20)
        erased = voxels_in_target(page)
        page.get_by_role("button", name="Scissors").click()  # erase inside a drawn shape, through the volume
        stroke(page, red, (0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8))
        until(lambda: voxels_in_target(page) < erased, timeout=20)
        page.get_by_role("button", name="Scissors").click()  # no tool

        undo = page.get_by_role("button", name="Undo")
        undo.click()  # the scissors
        until(lambda: voxels_in_target(page) == erased, timeout=20)
        undo.click()  # the eraser
        until(lambda: voxels_in_target(page) == largest, timeout=20)
        undo.click()  # the Islands apply
        until(lambda: voxels_in_target(page) == two_parts, timeout=20)
        undo.click()  # the second stroke
        until(lambda: voxels_in_target(page) == painted, timeout=20)
        undo.click()  # the first stroke: the view shows the slice as it was before it
        until(lambda: voxels_in_target(page) == after_run, timeout=20)
        page.wait_for_timeout(1000)
        assert changed_pixels(painted_frame, before_paint) > 200
        assert changed_pixels(red.screenshot(), before_paint) < 20
        assert "undone" not in log_text(page)  # strokes are not the agent's steps
        undo.click()  # now the agent's steps, with their markers and log lines: its Terminate, then its click
        expect(log).to_contain_text("undone: step 3")
        undo.click()
        expect(log).to_contain_text("undone: step 2 (marker 2−)")
        expect(page.get_by_role("list", name="Markers")).not_to_contain_text("2−")
        until(lambda: voxels_in_target(page) != after_run, timeout=20)

        segments = page.get_by_role("list", name="Segments")
        name = segments.get_by_label("Name of segment the white matter")
        name.fill("white matter")
        name.press("Enter")
        expect(page.get_by_text("white matter (IBISAgent segmentation)")).to_be_visible()
        segments.get_by_label("Colour of white matter").fill("#ff0000")
        expect(segments.get_by_label("Colour of white matter")).to_have_value("#ff0000")
        shown = red.screenshot()
        segments.get_by_role("button", name="Hide white matter").click()
        hidden = frame_after(page, "Red", shown)
        assert np.abs(pixels(hidden) - pixels(shown)).max() > 40
        segments.get_by_role("button", name="Show white matter").click()
        segments.get_by_label("Opacity of white matter").fill("0.3")
        expect(segments.get_by_label("Opacity of white matter")).to_have_value("0.3")

        segments.get_by_role("button", name="Delete white matter").click()
        expect(segments).to_contain_text("none yet")
        expect(page.get_by_role("button", name="Continue")).to_be_disabled()  # the session went with its segment
        undo.click()
        expect(segments.get_by_label("Name of white matter")).to_be_visible()


def test_open_from_the_pacs_run_and_save_the_seg_back(data, page, tmp_path):
    """Open from PACS (search by patient and modality, pick, retrieve) and Save to PACS, against a real Orthanc;
    the credentials stay on the server's command line, never in the page or the log."""
    import io

    import highdicom as hd
    import pydicom
    from orthanc import ORTHANC, PASSWORD, USER, running_orthanc
    from test_pacs import SERIES, STUDY, ct_tags, ct_volume
    from volume_data import write_dicom_series

    from IBISAgentLib.pacs.segmentation import attached_trace

    if ORTHANC is None:
        pytest.skip("Debian's orthanc is not installed (.ci/run installs it)")
    secret = tmp_path / "pacs-password"
    secret.write_text(PASSWORD)
    with running_orthanc(tmp_path / "orthanc") as pacs:
        flipped = ct_volume()  # stacked head to feet: file order, SimpleITK's and Slicer's slice orders differ
        flipped.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
        pacs.upload(write_dicom_series(flipped, tmp_path / "ct", ct_tags(STUDY, SERIES)))
        with served(
            "--mllm", f"replay:{data['replay']}", "--sam2", str(data["sam2"]), "--device", "cpu",
            "--out", str(tmp_path / "out"), "--pacs", pacs.dicomweb, "--pacs-user", USER,
            "--pacs-password-file", str(secret), cwd=tmp_path,
        ) as url:  # fmt: skip
            page.goto(url)
            expect(page.get_by_text(f"Open from PACS ({pacs.dicomweb})")).to_be_visible()
            page.get_by_label("Study date").fill("2026")
            page.get_by_role("button", name="Search").click()
            expect(alert(page)).to_contain_text("Date: YYYYMMDD")
            page.get_by_label("Study date").fill("")
            page.get_by_label("Patient ID").fill("P-0042")
            choose(page, "Modality", "CT")
            page.get_by_role("button", name="Search").click()
            expect(page.locator(".ia-pacs-said")).to_have_text("1 series found.")
            page.get_by_role("button", name="Open", exact=True).click()
            expect(
                page.get_by_text(re.compile(r"Volume: P-0042 · \d{8} · CT · AXIAL 2\.5 \(7 images\)"))
            ).to_be_visible()

            page.get_by_label("Instruction").fill("segment the spleen")
            page.get_by_role("button", name="Run", exact=True).click()
            expect(page.get_by_role("log", name="Reasoning")).to_contain_text("stopped: terminate")
            area = mask_area(page)
            page.get_by_role("button", name="Save to PACS").click()
            expect(page.locator(".ia-pacs-said")).to_contain_text(
                f"Stored the SEG of 'segment the spleen' in study {STUDY} on {pacs.dicomweb}"
            )
            assert PASSWORD not in page.content()
        assert PASSWORD not in (tmp_path / "server.log").read_text(encoding="utf-8")
        (seg_series,) = pacs.get(f"/dicom-web/studies/{STUDY}/series?Modality=SEG").json()
        seg_uid = seg_series["0020000E"]["Value"][0]
        (instance,) = pacs.get(f"/dicom-web/studies/{STUDY}/series/{seg_uid}/instances").json()
        raw = pacs.file(instance["00080018"]["Value"][0])
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(raw)))
    assert seg.get_segment_description(1).segmented_property_type.meaning == "Spleen"
    assert len({uid for _, _, uid in seg.get_source_image_uids()}) == 7
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((tmp_path / "ct").iterdir())]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[h.SOPInstanceUID for h in headers],
                                               segment_numbers=[1])  # fmt: skip
    per_slice = {float(h.ImagePositionPatient[2]): int(np.count_nonzero(pixels[k])) for k, h in enumerate(headers)}
    agent_z = attached_trace(seg).steps[0].ras[2]  # where the agent clicked, in millimetres (S of RAS = LPS z)
    (at_agent,) = [z for z in per_slice if abs(z - agent_z) < 1e-3]
    assert per_slice.pop(at_agent) == area  # the agent's slice, voxel for voxel ...
    assert set(per_slice.values()) == {0}  # ... and no other

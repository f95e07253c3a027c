"""A correction click in the browser (Chromium): how soon the agent's view shows it, the panel (log, marker, mask
area) shows its step, and the views settle, p50 / p95; and the web server's memory. Goals (issue 23 item 11,
DESIGN.md section 7): the view p95 <= 150 ms, the panel within 300 ms of the view, every slice view settled
within 400 ms (p95), with MedSAM2 at real size on our 2-core machines.

    .venv/bin/python Testing/Benchmarks/bench_web.py [VOLUME] [--clicks 20]

Without VOLUME: a 512 x 512 x 300 int16 CT-like volume. Times run from the mouse press on the agent's (Red)
view, in correction mode, to the first frame of a view's image stream that shows what the view settles on
(1.5 s without a new frame in any view ends the wait). Frames are told apart by their decoded pixels: a view
drawn again unchanged (the slice views are, when the 3D surface is replaced) does not count, nor does a view
that ends as it was. The 3D view (the surface, rebuilt once the edits settle) is timed on its own line. MedSAM2
has random weights at real size."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import SimpleITK as sitk
from playwright.sync_api import expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_web import start_server, stop_server, view_image

from IBISAgentLib.models.tiny_models import build_random_segmenter
from IBISAgentLib.tools import MEDSAM2

INSTRUMENT = """() => {
  const canvas = document.createElement("canvas");
  window.__frames = {};  // view -> [[time shown, hash of the decoded pixels]]
  window.__last = {};  // view -> the hash of the frame it shows now
  for (const view of ["Red", "Yellow", "Green", "ThreeD"]) {
    const img = document.querySelector(`div:has(> span.ia-view-${view}) img.image-display-area`);
    if (!img) continue;
    window.__frames[view] = [];
    img.addEventListener("load", () => {
      const shown = performance.now();
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const context = canvas.getContext("2d", {willReadFrequently: true});
      context.drawImage(img, 0, 0);
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
      let hash = 2166136261;
      for (let i = 0; i < pixels.length; i += 3) hash = Math.imul(hash ^ pixels[i], 16777619) >>> 0;
      window.__frames[view].push([shown, hash]);
      window.__last[view] = hash;
    });
  }
  window.__presses = [];
  document.querySelector("div:has(> span.ia-view-Red) .remote-controlled-area")
    .addEventListener("pointerdown", () => window.__presses.push(performance.now()), true);
}"""

# Before each click: forget the frames, note what each view shows, and watch the panel for the click's step
# (its log line and marker, and the mask area changing).
EXPECT = """([line, marker]) => {
  window.__before = {...window.__last};
  for (const view in window.__frames) window.__frames[view] = [];
  window.__presses = [];
  window.__panel = {};
  const area = () => (document.querySelector(".ia-mask-area") || {}).textContent;
  const areaBefore = area();
  if (window.__observer) window.__observer.disconnect();
  window.__observer = new MutationObserver(() => {
    const now = performance.now(), panel = window.__panel;
    const log = document.querySelector('[aria-label="Reasoning"]').textContent;
    const markers = (document.querySelector('[aria-label="Markers"]') || {}).textContent || "";
    if (!panel.log && log.includes(line)) panel.log = now;
    if (!panel.marker && markers.includes(marker)) panel.marker = now;
    if (!panel.area && area() !== areaBefore) panel.area = now;
  });
  window.__observer.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def settled_at(frames: list[list[float]], before: int | None) -> float | None:
    """When a view first showed what it settled on; None when it ends as it was."""
    if not frames or frames[-1][1] == before:
        return None
    return next(shown for shown, pixels in frames if pixels == frames[-1][1])


SERIES = {  # what is measured for each click, and its goal (issue 23 item 11)
    "click -> the agent's view updated": "p95 <= 150 ms",
    "click -> the panel shows the step (log, marker, area)": "-",
    "the panel after the view": "p95 <= 300 ms",
    "click -> every slice view settled": "p95 <= 400 ms",
    "click -> the 3D view settled (the surface)": "-",
}


def rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("volume", nargs="?")
    parser.add_argument("--clicks", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run(Path(folder), args.volume, args.clicks)


def run(work: Path, volume: str | None, clicks: int) -> None:
    if volume is None:
        volume = str(work / "ct512x512x300.nii.gz")
        voxels = np.random.default_rng(0).integers(-1000, 1500, (300, 512, 512), dtype=np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(voxels), volume)
    checkpoint = work / "medsam2.pt"
    build_random_segmenter(checkpoint, MEDSAM2)
    replay = work / "outputs.json"
    replay.write_text(
        json.dumps(
            [
                "<think>centre</think><action>Positive Point (0.5000, 0.5000)</action>",
                "<think>good</think><action>Terminate</action><answer>Done.</answer>",
            ]
        )
    )
    started = time.monotonic()
    server, url = start_server(
        volume,
        "--mllm",
        f"replay:{replay}",
        "--sam2",
        str(checkpoint),
        "--device",
        "cpu",
        "--out",
        str(work / "out"),
        cwd=work,
    )
    print(
        f"server up in {time.monotonic() - started:.1f} s, RSS {rss_mb(server.pid):.0f} MB (volume loaded, no client)"
    )
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            expect.set_options(timeout=180_000)
            t = time.monotonic()
            page.goto(url)
            red = view_image(page, "Red")
            expect(red).to_be_visible()
            page.wait_for_timeout(2000)
            print(f"page with views: {time.monotonic() - t:.1f} s; RSS {rss_mb(server.pid):.0f} MB with a client")
            page.get_by_label("Instruction").fill("segment the centre")
            t = time.monotonic()
            page.get_by_role("button", name="Run", exact=True).click()
            expect(page.get_by_role("log", name="Reasoning")).to_contain_text("stopped: terminate")
            print(
                f"Run (model load + set_image + 1 click): {time.monotonic() - t:.1f} s; RSS {rss_mb(server.pid):.0f} MB"
            )
            page.get_by_role("button", name="Add point").click()
            page.evaluate(INSTRUMENT)
            box = red.bounding_box()
            series: dict[str, list[float]] = {name: [] for name in SERIES}
            for n in range(clicks):
                fx, fy = 0.35 + 0.3 * ((n * 7) % 10) / 10, 0.35 + 0.3 * ((n * 3) % 10) / 10
                x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
                page.mouse.move(x, y)
                page.wait_for_timeout(600)
                line = f"{n + 3}. you: positive click {n + 2}+"  # the agent's click was 1+, then it terminated
                page.evaluate(EXPECT, [line, f"{n + 2}+"])
                page.mouse.click(x, y)
                expect(page.get_by_role("log", name="Reasoning")).to_contain_text(line)
                while True:  # wait for 1.5 s without a new frame in any view
                    count = page.evaluate("() => Object.values(window.__frames).flat().length")
                    page.wait_for_timeout(1500)
                    if page.evaluate("() => Object.values(window.__frames).flat().length") == count:
                        break
                press, frames, before, panel = page.evaluate(
                    "() => [window.__presses[0], window.__frames, window.__before, window.__panel]"
                )
                view = settled_at(frames["Red"], before.get("Red"))
                if view is None:
                    raise SystemExit(f"click {n + 1}: the agent's view showed no new frame")
                shown = max(t for t in (panel.get("log"), panel.get("marker"), panel.get("area")) if t is not None)
                slices = [settled_at(f, before.get(v)) for v, f in frames.items() if v != "ThreeD"]
                surface = settled_at(frames.get("ThreeD", []), before.get("ThreeD"))
                series["click -> the agent's view updated"].append(view - press)
                series["click -> the panel shows the step (log, marker, area)"].append(shown - press)
                series["the panel after the view"].append(shown - view)
                series["click -> every slice view settled"].append(max(t for t in slices if t is not None) - press)
                if surface is not None:
                    series["click -> the 3D view settled (the surface)"].append(surface - press)
            browser.close()
        for name, values in series.items():
            if not values:
                continue
            values.sort()
            p50 = statistics.median(values)
            p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
            print(
                f"{name:<55} {len(values)} clicks: p50 {p50:5.0f} ms, p95 {p95:5.0f} ms, "
                f"min {values[0]:5.0f}, max {values[-1]:5.0f}   goal: {SERIES[name]}"
            )
        print(f"server RSS at the end: {rss_mb(server.pid):.0f} MB")
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()

"""Correction click to updated slice view in the browser (Chromium), p50 / p95, and the web server's memory.
Goal (DESIGN.md section 7): p95 <= 250 ms with MedSAM2 at real size on our 2-core machines.

    .venv/bin/python Testing/Benchmarks/bench_web.py [VOLUME] [--clicks 20]

Without VOLUME: a 512 x 512 x 300 int16 CT-like volume. Latency runs from the mouse press on the agent's
(Red) view, in correction mode, to the first frame of that view's image stream that shows what the view
settles on (the new mask and marker; 1.5 s without a new frame ends the wait). Frames are told apart by their
decoded pixels: a view drawn again unchanged (the slice views are, when the 3D surface is replaced) does not
count. Also printed: the last frame, changed or not. MedSAM2 has random weights at real size."""

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
  const img = document.querySelector("div:has(> span.ia-view-Red) img.image-display-area");
  const canvas = document.createElement("canvas");
  window.__frames = [];  // [time shown, hash of the decoded pixels]
  img.addEventListener("load", () => {
    const shown = performance.now();
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d", {willReadFrequently: true});
    context.drawImage(img, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let hash = 2166136261;
    for (let i = 0; i < pixels.length; i += 3) hash = Math.imul(hash ^ pixels[i], 16777619) >>> 0;
    window.__frames.push([shown, hash]);
  });
  window.__presses = [];
  img.closest(".remote-controlled-area")
    .addEventListener("pointerdown", () => window.__presses.push(performance.now()), true);
}"""


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
            latencies, lasts = [], []
            for n in range(clicks):
                fx, fy = 0.35 + 0.3 * ((n * 7) % 10) / 10, 0.35 + 0.3 * ((n * 3) % 10) / 10
                x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
                page.mouse.move(x, y)
                page.wait_for_timeout(600)
                page.evaluate("() => { window.__frames = []; window.__presses = []; }")
                page.mouse.click(x, y)
                expect(page.get_by_role("log", name="Reasoning")).to_contain_text(f"{n + 3}. you: positive click")
                while True:  # wait for 1.5 s without a new frame
                    count = page.evaluate("() => window.__frames.length")
                    page.wait_for_timeout(1500)
                    if page.evaluate("() => window.__frames.length") == count:
                        break
                press, frames = page.evaluate("() => [window.__presses[0], window.__frames]")
                if not frames:
                    raise SystemExit(f"click {n + 1}: the agent's view showed no new frame")
                settled = next(shown for shown, pixels in frames if pixels == frames[-1][1])
                latencies.append(settled - press)
                lasts.append(frames[-1][0] - press)
            browser.close()
        for name, values in (("click -> updated view", latencies), ("click -> last frame (changed or not)", lasts)):
            values.sort()
            p50 = statistics.median(values)
            p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
            print(
                f"{name}, {len(values)} clicks: p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
                f"min {values[0]:.0f}, max {values[-1]:.0f}"
            )
        print(f"server RSS at the end: {rss_mb(server.pid):.0f} MB")
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()

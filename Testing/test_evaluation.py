"""``ibisagent eval`` at serving scale (several sessions at once against an OpenAI-compatible endpoint) and
volume-level evaluation (3D Dice and HD95 of the propagated mask)."""

import hashlib
import json
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk
from fake_openai_server import FakeOpenAIServer
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial import cKDTree
from test_cli import ibisagent
from volume_data import mni_tissue_dataset

from IBISAgentLib.training.evaluation import volume_overlap


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """The real MNI manifest, its three slices each asked twice more on other slices (nine samples)."""
    path = mni_tissue_dataset(tmp_path_factory.mktemp("mni"))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    more = [
        row
        | {"id": f"{row['id']}-{offset}", "slice": f"{row['slice'].split(':')[0]}:{int(row['slice'][-3:]) + offset}"}
        for row in rows
        for offset in (-6, 6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + more))
    return path


class DeterministicModel:
    """Answers from the request alone (a hash of the messages, image included), so a session's answers
    depend only on what that session showed; counts how many requests were in flight at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def __call__(self, body: dict) -> tuple[int, str]:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(0.05)
        digest = int(hashlib.blake2b(json.dumps(body["messages"]).encode(), digest_size=8).hexdigest(), 16)
        with self.lock:
            self.in_flight -= 1
        if digest % 4 == 0:
            return 200, "<think>Done.</think><action>Terminate</action><answer>ok</answer>"
        kind = "Positive" if digest & 16 else "Negative"
        x, y = 0.3 + (digest % 400) / 1000, 0.3 + ((digest >> 10) % 400) / 1000
        return 200, f"<think>Turn.</think><action>{kind} Point ({x:.3f}, {y:.3f})</action>"


def _rows(report_dir):
    rows = [json.loads(line) for line in (report_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    return {row["id"]: {k: v for k, v in row.items() if k != "seconds"} for row in rows}


def test_workers_give_the_results_of_one_worker_and_resume(manifest, tmp_path):
    model = DeterministicModel()
    common = ("--dataset", manifest, "--tool", "classical", "--max-turns", "4")
    with FakeOpenAIServer(respond=model) as server:
        one = ibisagent("eval", *common, "--mllm", server.url, "--report", tmp_path / "one")
        assert one.returncode == 0, one.stderr
        assert model.most_in_flight == 1
        four = ibisagent("eval", *common, "--mllm", server.url, "--workers", "4", "--report", tmp_path / "four")
        assert four.returncode == 0, four.stderr
        assert model.most_in_flight > 1  # sessions really ran at once
        expected = _rows(tmp_path / "one")
        assert len(expected) == 9 and {row["clicks"] for row in expected.values()} != {0}
        assert _rows(tmp_path / "four") == expected

        results = tmp_path / "four" / "results.jsonl"
        kept = results.read_text(encoding="utf-8").splitlines()[:5]
        results.write_text("".join(line + "\n" for line in kept))
        again = ibisagent("eval", *common, "--mllm", server.url, "--workers", "4", "--report", tmp_path / "four")
        assert again.returncode == 0, again.stderr
        lines = results.read_text(encoding="utf-8").splitlines()
        assert lines[:5] == kept and len(lines) == 9  # resumed: finished rows kept, only the missing ones run
        assert _rows(tmp_path / "four") == expected
    report = json.loads((tmp_path / "four" / "report.json").read_text(encoding="utf-8"))
    assert [row["id"] for row in report["samples"]] == [json.loads(line)["id"] for line in manifest.open()]


def test_a_model_in_this_process_is_not_shared_by_workers(manifest, tiny_models, tmp_path):
    result = ibisagent("eval", "--dataset", manifest, "--tool", "classical", "--mllm", tiny_models[0],
                       "--workers", "2", "--report", tmp_path)  # fmt: skip
    assert result.returncode == 2 and "OpenAI-compatible endpoint" in result.stderr


def test_volume_evaluation_reports_the_propagated_mask(manifest, tiny_models, tmp_path):
    from IBISAgentLib.agent.session import AgentSession
    from IBISAgentLib.tools.classical import RandomWalkerTool
    from IBISAgentLib.tools.propagation import SAM2Propagator
    from IBISAgentLib.training.manifest import load_sample, read_manifest
    from IBISAgentLib.training.oracle import OraclePolicy

    # A block of the real T1 and its white-matter label, so propagation crosses 6 slices, not 189.
    for name in ("t1", "wm"):
        whole = sitk.ReadImage(str(manifest.parent / f"{name}.nii.gz"))
        sitk.WriteImage(sitk.RegionOfInterest(whole, (64, 64, 6), (66, 80, 97)), str(tmp_path / f"{name}.nii.gz"))
    single = tmp_path / "one.jsonl"
    row = {"id": "wm", "image": "t1.nii.gz", "mask": "wm.nii.gz", "target": "white matter", "slice": "axial:3"}
    single.write_text(json.dumps(row | {"modality": "MR"}) + "\n")
    common = ("eval", "--dataset", single, "--policy", "oracle", "--tool", "classical", "--report", tmp_path / "r")
    result = ibisagent(*common, "--propagate", "--propagator", tiny_models[1], "--max-turns", "3")
    assert result.returncode == 0, result.stderr
    assert "volumes: 3D Dice" in result.stdout
    row = json.loads((tmp_path / "r" / "results.jsonl").read_text(encoding="utf-8"))

    sample = load_sample(read_manifest(single)[0], keep_volume=True)
    session = AgentSession(sample.image, f"Segment the {sample.target}.", OraclePolicy(sample.ground_truth),
                           RandomWalkerTool(), max_turns=3)  # fmt: skip
    session.run()
    volume = SAM2Propagator(tiny_models[1], device="cpu").propagate(
        sample.case.windowed, sample.case.geometry, session.mask
    )
    expected = volume_overlap(sample.volume_truth, volume.mask, sample.case.image)
    assert row["volume_dice"] == pytest.approx(expected["volume_dice"])
    assert row["hd95_mm"] == pytest.approx(expected["hd95_mm"])
    markdown = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "| 3D Dice | HD95 (mm) |" in markdown and f"{row['volume_dice']:.4f}" in markdown


def test_volume_evaluation_with_the_check_and_the_search(manifest, tmp_path):
    """The weight-free segmenter propagates by itself; --check adds the 3D measures after the check, --search the
    key-slice hit rate, in the results, the summary and the report."""
    for name in ("t1", "wm"):
        whole = sitk.ReadImage(str(manifest.parent / f"{name}.nii.gz"))
        sitk.WriteImage(sitk.RegionOfInterest(whole, (64, 64, 20), (66, 80, 90)), str(tmp_path / f"{name}.nii.gz"))
    single = tmp_path / "one.jsonl"
    row = {"id": "wm", "image": "t1.nii.gz", "mask": "wm.nii.gz", "target": "white matter", "slice": "axial:10"}
    single.write_text(json.dumps(row | {"modality": "MR"}) + "\n")
    result = ibisagent("eval", "--dataset", single, "--policy", "oracle", "--tool", "classical", "--propagate",
                       "--check", "--search", "--report", tmp_path / "r")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "after the check 3D Dice" in result.stdout and "key-slice hit rate 1.00" in result.stdout
    row = json.loads((tmp_path / "r" / "results.jsonl").read_text(encoding="utf-8"))
    assert row["key_slice_hit"] is True and 0 <= row["key_slice"] < 20
    assert 0 < row["volume_dice"] <= 1 and 0 < row["volume_dice_checked"] <= 1 and row["checks"] >= 0
    markdown = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "3D Dice, checked" in markdown and "key-slice hits" in markdown


def _ball(shape, centre, radius):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius**2


def _surface_distance_hd95(a, b, spacing):
    """HD95 from surface voxels and a k-d tree in millimetres: a second computation, not SimpleITK's."""
    scale = np.array(spacing[::-1])

    def surface(mask):
        return np.argwhere(mask & ~ndimage.binary_erosion(mask)) * scale

    sa, sb = surface(a), surface(b)
    return max(np.percentile(cKDTree(sb).query(sa)[0], 95), np.percentile(cKDTree(sa).query(sb)[0], 95))


@settings(max_examples=25, deadline=None)
@given(
    radii=st.tuples(st.integers(3, 8), st.integers(3, 8)),
    shift=st.tuples(st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3)),
    spacing=st.tuples(*[st.floats(0.4, 3.0)] * 3),
)
def test_hd95_is_the_95th_percentile_surface_distance_in_mm(radii, shift, spacing):
    shape = (24, 30, 30)
    truth = _ball(shape, (12, 15, 15), radii[0])
    mask = _ball(shape, (12 + shift[0], 15 + shift[1], 15 + shift[2]), radii[1])
    reference = sitk.Image(shape[2], shape[1], shape[0], sitk.sitkUInt8)
    reference.SetSpacing(spacing)
    measured = volume_overlap(truth, mask, reference)
    # The two computations differ below a voxel: SimpleITK measures from voxel centres to the other mask's
    # boundary, the k-d tree between surface voxel centres; a percentile can move by up to half a voxel side.
    expected = _surface_distance_hd95(truth, mask, spacing)
    assert measured["hd95_mm"] == pytest.approx(expected, abs=max(0.1, 0.5 * max(spacing)))
    dice = 2 * (truth & mask).sum() / (truth.sum() + mask.sum())
    assert measured["volume_dice"] == pytest.approx(dice)


def test_hd95_is_zero_for_equal_masks_and_undefined_for_an_empty_one():
    reference = sitk.Image(20, 20, 12, sitk.sitkUInt8)
    ball = _ball((12, 20, 20), (6, 10, 10), 4)
    assert volume_overlap(ball, ball, reference) == {"volume_dice": 1.0, "hd95_mm": 0.0}
    assert volume_overlap(ball, np.zeros_like(ball), reference) == {"volume_dice": 0.0, "hd95_mm": None}

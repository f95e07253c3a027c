"""The agent on a volume, where the truth is known: it finds the key slice, says when the target is absent,
and its check flags and repairs a propagation that leaked. Real sessions (the oracle policy, the weight-free
segmenter, tiny MedSAM2 for multi-key propagation), synthetic phantoms and the real MNI T1 with its white matter."""

import json

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
from test_cli import SCHEMA, ibisagent
from volume_data import LeakyPropagator, mni_crop, mni_path

from IBISAgentLib.agent.backends import LocalBackend
from IBISAgentLib.agent.trace import Trace
from IBISAgentLib.agent.volume_agent import check_propagation, search_key_slice
from IBISAgentLib.imaging.volume_case import VolumeCase
from IBISAgentLib.tools import PropagationOptions
from IBISAgentLib.tools.classical import CLASSICAL
from IBISAgentLib.training.oracle import ReferenceOracle

PROMPT = "segment the lesion"


def _phantom(folder, depth=40, seed=0):
    """A noisy CT-like volume: a lesion (an ellipsoid) beside a brighter neighbouring organ; its reference."""
    k, j, i = np.mgrid[0:depth, 0:64, 0:64]
    centre = depth // 2 + 2
    lesion = ((k - centre) / 9.0) ** 2 + ((j - 30) / 12.0) ** 2 + ((i - 26) / 12.0) ** 2 <= 1
    neighbour = ((k - centre) / 12.0) ** 2 + ((j - 30) / 10.0) ** 2 + ((i - 50) / 6.0) ** 2 <= 1
    voxels = np.full(lesion.shape, -100.0)
    voxels[lesion], voxels[neighbour] = 120, 140
    voxels += np.random.default_rng(seed).normal(0, 8, voxels.shape)
    image = sitk.GetImageFromArray(voxels.astype(np.int16))
    image.SetSpacing((0.8, 0.8, 2.0))
    reference = sitk.GetImageFromArray(lesion.astype(np.uint8))
    reference.CopyInformation(image)
    sitk.WriteImage(image, str(folder / "phantom.nii.gz"))
    sitk.WriteImage(reference, str(folder / "lesion.nii.gz"))
    return folder / "phantom.nii.gz", folder / "lesion.nii.gz", lesion, neighbour


def _backend(reference):
    return LocalBackend(lambda: ReferenceOracle(reference), CLASSICAL.tool())


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


@pytest.mark.parametrize("depth", [20, 40, 64])
def test_the_search_finds_a_key_slice_inside_the_target_looking_at_under_half(tmp_path, depth):
    volume, reference, lesion, _ = _phantom(tmp_path, depth)
    backend = _backend(reference)
    case = VolumeCase.load(volume, "axial")
    found = search_key_slice(lambda c: backend.open_session(c, PROMPT, max_turns=1), case)
    areas = lesion.sum(axis=(1, 2))
    assert found.key is not None and areas[found.key] >= 0.9 * areas.max()
    assert len(found.records) < depth / 2
    assert {r.verdict for r in found.records if areas[r.index] == 0} <= {"absent"}
    assert all(r.verdict == "present" for r in found.records if areas[r.index] > 0)


def test_an_absent_target_ends_with_an_empty_mask_and_says_where_it_looked(tmp_path):
    volume, _, lesion, _ = _phantom(tmp_path)
    empty = sitk.GetImageFromArray(np.zeros(lesion.shape, np.uint8))
    empty.CopyInformation(sitk.ReadImage(str(volume)))
    sitk.WriteImage(empty, str(tmp_path / "none.nii.gz"))
    oracle = f"oracle:{tmp_path / 'none.nii.gz'}"
    result = ibisagent("segment", volume, "--prompt", "segment the spleen", "--slice", "auto", "--propagate",
                       "--mllm", oracle, "--segmenter", "classical", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    trace = json.loads((tmp_path / "phantom_trace.json").read_text(encoding="utf-8"))
    jsonschema.validate(trace, SCHEMA)
    looked = [r["index"] for r in trace["search"]]
    assert trace["search"] and all(r["verdict"] == "absent" for r in trace["search"])
    assert trace["answer"].startswith("The target was not found") and str(looked[-1]) in trace["answer"]
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "phantom_mask.nii.gz"))).any()


def test_slice_auto_propagate_check_end_to_end(tmp_path):
    volume, reference, lesion, _ = _phantom(tmp_path)
    result = ibisagent("segment", volume, "--prompt", PROMPT, "--slice", "auto", "--propagate", "--check",
                       "--mllm", f"oracle:{reference}", "--segmenter", "classical", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "search: key slice axial" in result.stdout and "check:" in result.stdout
    trace = json.loads((tmp_path / "phantom_trace.json").read_text(encoding="utf-8"))
    jsonschema.validate(trace, SCHEMA)
    assert trace["version"] == 2
    areas = lesion.sum(axis=(1, 2))
    assert areas[trace["slice"]["index"]] == max(areas[r["index"]] for r in trace["search"])
    assert {s["index"] for s in trace["propagation"]["slices"]} >= set(np.flatnonzero(lesion.any(axis=(1, 2))))
    assert trace["checks"] is not None
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "phantom_mask.nii.gz"))) > 0
    assert _dice(mask, lesion) > 0.9
    assert Trace.load(tmp_path / "phantom_trace.json").search == trace["search"]


def test_the_check_flags_a_leak_and_repairs_it(tmp_path):
    volume, reference, lesion, neighbour = _phantom(tmp_path)
    case = VolumeCase.load(volume, "axial:22")
    backend = _backend(reference)
    start = 25
    backend._propagator = LeakyPropagator(neighbour, start)
    session = backend.open_session(case, PROMPT)
    session.run()
    options = PropagationOptions(stop_after_empty=0)
    before = backend.propagate_with_keys(session, options)
    leaked = [i for i in range(start, lesion.shape[0]) if (before.mask[i] & neighbour[i]).any()]
    assert leaked

    def open_slice(slice_case, mask):
        return backend.open_session(slice_case, PROMPT, initial_mask=mask)

    def propagate(extra):
        return backend.propagate_with_keys(session, options, extra_keys=extra)

    after, checks, _ = check_propagation(propagate, open_slice, case, before, [], budget=8)
    flagged = {c.index for c in checks}
    assert start in flagged  # where the leak enters
    assert any(c.index == start and c.outcome == "corrected" for c in checks)
    assert not any((after.mask[i] & neighbour[i] & ~lesion[i]).any() for i in leaked)
    print(f"leak repaired: Dice {_dice(before.mask, lesion):.3f} -> {_dice(after.mask, lesion):.3f}; leaked slices "
          f"{leaked}, re-checked {sorted(flagged)}")  # fmt: skip
    assert _dice(after.mask, lesion) > 0.98 and _dice(after.mask, lesion) - _dice(before.mask, lesion) > 0.05


def test_sam2_propagation_takes_several_key_slices_and_scores_every_slice(tmp_path, tiny_models):
    from IBISAgentLib.tools.propagation import SAM2Propagator

    volume, _, lesion, _ = _phantom(tmp_path, depth=12)
    case = VolumeCase.load(volume, "axial:6")
    propagator = SAM2Propagator(tiny_models[1], device="cpu")
    key_mask = np.ascontiguousarray(case.geometry.extract(lesion))
    extra = {3: np.ascontiguousarray(case.at(3).geometry.extract(lesion)), 9: np.zeros_like(key_mask)}
    result = propagator.propagate(case.windowed, case.geometry, key_mask, PropagationOptions(stop_after_empty=0),
                                  extra_keys=extra)  # fmt: skip
    assert sorted(result.slices) == list(range(12))
    for index, mask in {6: key_mask, **extra}.items():  # key slices are written as given
        assert np.array_equal(case.at(index).geometry.extract(result.mask), mask)
    assert all(result.slices[i].score is not None for i in (0, 1, 2, 4, 5, 7, 8, 10, 11))
    assert result.slices[4].agreement is not None and result.slices[10].agreement is None  # between 3 and 6 only


def test_a_version_1_trace_still_loads(tmp_path):
    data = Trace("x", __import__("IBISAgentLib.agent.trace", fromlist=["ImageInfo"]).ImageInfo(4, 4), {}, [], None,
                 "terminate").to_dict()  # fmt: skip
    data["version"] = 1
    for field in ("search", "propagation", "checks"):
        del data[field]
    jsonschema.validate(data, SCHEMA)
    assert Trace.from_dict(data).search is None


def test_the_check_on_the_real_mni_white_matter(tmp_path):
    """A real labelled volume: the MNI T1 and its white matter (probability > 0.5), the oracle and the weight-free
    segmenter; the figures (Dice without and with --check) are printed for README."""
    t1 = mni_crop((64, 72, 24), (66, 80, 78))
    white = sitk.RegionOfInterest(sitk.ReadImage(str(mni_path("wm"))), (64, 72, 24), (66, 80, 78))
    labels = sitk.BinaryThreshold(white, 129, 255, 1, 0)
    labels.CopyInformation(t1)
    sitk.WriteImage(t1, str(tmp_path / "t1.nii.gz"))
    sitk.WriteImage(labels, str(tmp_path / "wm.nii.gz"))
    truth = sitk.GetArrayFromImage(labels) > 0
    dice = {}
    for flags in ((), ("--check",)):
        result = ibisagent("segment", tmp_path / "t1.nii.gz", "--prompt", "segment the white matter", "--slice",
                           "axial:12", "--propagate", *flags, "--mllm", f"oracle:{tmp_path / 'wm.nii.gz'}",
                           "--segmenter", "classical", "--out", tmp_path / f"out{len(flags)}.nii.gz",
                           cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"out{len(flags)}.nii.gz"))) > 0
        dice[bool(flags)] = _dice(mask, truth)
    print(f"MNI white matter, oracle + classical: 3D Dice {dice[False]:.3f} without --check, {dice[True]:.3f} with")
    assert dice[False] > 0.5 and dice[True] >= dice[False] - 0.01


def test_the_driver_finds_the_slice_propagates_and_checks(tmp_path):
    """What the web app and the Slicer module run: start with find, then propagate with a check budget; the
    log, the per-slice records, the segment and the trace say what happened."""
    from workflow_ports import LOCAL, ArrayTarget

    from IBISAgentLib.workflow import WorkflowDriver

    volume, reference, lesion, neighbour = _phantom(tmp_path)
    backend = _backend(reference)
    driver = WorkflowDriver(build_backend=lambda choice: backend)
    case = VolumeCase.load(volume, "axial")  # the middle slice: the lesion is elsewhere at its largest
    target = ArrayTarget(case.windowed.shape)
    driver.start(case, PROMPT, target, target, LOCAL, find=True)
    driver.wait()
    areas = lesion.sum(axis=(1, 2))
    key = driver.case.geometry.index
    assert areas[key] == areas.max() and driver.state.stop_reason == "terminate"
    assert any(line.startswith("looked at slice") for line in driver.state.log)
    assert f"working on axial slice {key}" in driver.state.log
    backend._propagator = LeakyPropagator(neighbour, key + 3)
    driver.propagate(PropagationOptions(stop_after_empty=0), check_budget=8)
    driver.wait()
    assert any(line.startswith(f"checked slice {key + 3}") and "corrected" in line for line in driver.state.log)
    assert {s["index"] for s in driver.state.slices} == set(range(lesion.shape[0]))
    assert _dice(target.segment, lesion) > 0.98
    trace = json.loads(target.traces[-1])
    jsonschema.validate(trace, SCHEMA)
    assert trace["search"] and trace["propagation"]["slices"] and any(c["index"] == key + 3 for c in trace["checks"])


def test_the_driver_says_when_no_slice_shows_the_target(tmp_path):
    from workflow_ports import LOCAL, ArrayTarget

    from IBISAgentLib.workflow import WorkflowDriver

    volume, _, lesion, _ = _phantom(tmp_path, depth=24)
    empty = sitk.GetImageFromArray(np.zeros(lesion.shape, np.uint8))
    empty.CopyInformation(sitk.ReadImage(str(volume)))
    sitk.WriteImage(empty, str(tmp_path / "none.nii.gz"))
    driver = WorkflowDriver(build_backend=lambda choice: _backend(tmp_path / "none.nii.gz"))
    case = VolumeCase.load(volume, "axial")
    target = ArrayTarget(case.windowed.shape)
    driver.start(case, "segment the spleen", target, target, LOCAL, find=True)
    driver.wait()
    assert driver.session is None and driver.state.stop_reason == "terminate"
    assert driver.state.answer.startswith("The target was not found") and not target.segment.any()


def test_search_and_check_run_on_the_server_too(tmp_path):
    """--server: the search opens its one-turn sessions on the server (the volume crosses the wire once) and the
    check runs there, its re-checks streaming back; the trace is the same as in this process."""
    from server_process import ServerProcess

    volume, reference, lesion, _ = _phantom(tmp_path)
    arguments = ["--mllm", f"oracle:{reference}", "--segmenter", "classical"]
    with ServerProcess(*arguments, log=tmp_path / "server.log") as server:
        remote = ibisagent("segment", volume, "--prompt", PROMPT, "--slice", "auto", "--propagate", "--check",
                           "--server", server.url, "--trace", tmp_path / "remote.json", "--out",
                           tmp_path / "remote.nii.gz", cwd=tmp_path, env={"IBISAGENT_TOKEN": server.token})  # fmt: skip
        uploads = server.read_log().count("PUT /v1/images/")
    assert remote.returncode == 0, remote.stderr
    assert "check: axial" in remote.stdout and "propagated and checked" in remote.stdout
    assert uploads == 1
    local = ibisagent("segment", volume, "--prompt", PROMPT, "--slice", "auto", "--propagate", "--check",
                      *arguments, "--trace", tmp_path / "local.json", "--out", tmp_path / "local.nii.gz",
                      cwd=tmp_path)  # fmt: skip
    assert local.returncode == 0, local.stderr
    traces = [json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8")) for name in ("remote", "local")]
    for trace in traces:
        jsonschema.validate(trace, SCHEMA)
    assert traces[0]["search"] == traces[1]["search"]
    assert traces[0]["propagation"] == traces[1]["propagation"]
    assert [(c["index"], c["outcome"]) for c in traces[0]["checks"]] == [
        (c["index"], c["outcome"]) for c in traces[1]["checks"]
    ]
    masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{n}.nii.gz"))) for n in ("remote", "local")]
    assert np.array_equal(*masks) and _dice(masks[0] > 0, lesion) > 0.9


def test_the_review_scene_marks_the_checked_slices(tmp_path):
    pytest.importorskip("slicer", reason="Slicer's core is not installed (the slicer extra)")
    from IBISAgentMRML import load_mrb, new_scene
    from IBISAgentMRML.bundle import CHECKED_NODE_NAME

    volume, reference, _, _ = _phantom(tmp_path)
    result = ibisagent("segment", volume, "--prompt", PROMPT, "--slice", "auto", "--propagate", "--check",
                       "--mllm", f"oracle:{reference}", "--segmenter", "classical", "--scene", tmp_path / "review.mrb",
                       cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    trace = json.loads((tmp_path / "phantom_trace.json").read_text(encoding="utf-8"))
    headless = new_scene(tmp_path / "cache")
    load_mrb(headless.scene, tmp_path / "review.mrb")
    node = headless.scene.GetFirstNodeByName(CHECKED_NODE_NAME)
    labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
    assert trace["checks"] and all(
        any(label.startswith(f"slice {c['index']}: {c['outcome']}") for label in labels) for c in trace["checks"]
    )
    image = sitk.ReadImage(str(volume))
    for i in range(node.GetNumberOfControlPoints()):  # each point lies on its slice (RAS -> LPS -> index)
        r, a, s = node.GetNthControlPointPositionWorld(i)
        k = image.TransformPhysicalPointToContinuousIndex((-r, -a, s))[2]
        assert round(k) == int(labels[i].split()[1].rstrip(":"))

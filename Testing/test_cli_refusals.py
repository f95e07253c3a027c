"""The CLI refuses what it cannot use in one line with exit 2, before the run, and a run that fails part way
still writes what was done (real CLI process, real files, tiny models)."""

import gzip
import json
import struct

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE
from PIL import Image
from test_cli import ibisagent, replay_file

import IBISAgentLib.cli
from IBISAgentLib.agent.trace import Trace

CLICK = "<think>here</think><action>Positive Point (0.5000, 0.2500)</action>"
TERMINATE = "<think>done</think><action>Terminate</action><answer>ok</answer>"


def _refused(result, reason):
    assert result.returncode == 2, result.stderr
    assert reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "step 1" not in result.stdout


def _nifti_header(size: tuple[int, int, int], bitpix: int = 8, datatype: int = 2) -> bytes:
    """A NIfTI-1 header (348 bytes and the 4-byte extension flag) declaring a uint8 volume of ``size``."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *size, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    return bytes(header)


def test_a_volume_declaring_more_voxels_than_the_limit_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.nii.gz"  # 1024 x 1024 x 1100 declared, a few KB on disk
    with gzip.open(bomb, "wb") as handle:
        handle.write(_nifti_header((1024, 1024, 1100)) + bytes(1 << 16))
    _refused(ibisagent("segment", bomb, "--prompt", "x", cwd=tmp_path), "more than the limit of 268,435,456")
    _refused(ibisagent("segment", bomb, "--prompt", "x", "--max-voxels", "2000000000", cwd=tmp_path), "is truncated")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_truncated_nifti_is_refused_not_read_as_zeros(tmp_path, suffix):
    volume = sitk.GetImageFromArray(np.arange(8 * 32 * 32, dtype=np.int16).reshape(8, 32, 32))
    whole = tmp_path / f"whole{suffix}"
    sitk.WriteImage(volume, str(whole))
    if suffix == ".nii":
        data = whole.read_bytes()
    else:
        data = gzip.compress(gzip.decompress(whole.read_bytes())[: 352 + 8 * 32 * 32 * 2 - 100])
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) - 100] if suffix == ".nii" else data)
    _refused(ibisagent("segment", cut, "--prompt", "x", cwd=tmp_path), "the file is truncated")


def test_a_huge_2d_image_is_refused_before_it_is_decoded(tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("L", (12000, 12000)).save(huge)
    _refused(ibisagent("segment", huge, "--prompt", "x", cwd=tmp_path), "larger than the limit of 4096")


@pytest.mark.parametrize(
    ("make_args", "reason"),
    [
        (lambda t: ["--out", SAMPLE], f"is the input {SAMPLE}"),
        (lambda t: ["--trace", SAMPLE], f"is the input {SAMPLE}"),
        (lambda t: ["--out", t / "same.png", "--trace", t / "same.png"], "is also --out"),
        (lambda t: ["--mllm", f"replay:{t / 'r.json'}", "--trace", t / "r.json"], "is the input"),
    ],
)
def test_an_output_that_would_overwrite_an_input_is_refused(tmp_path, make_args, reason):
    (tmp_path / "r.json").write_text(json.dumps([TERMINATE]))
    before = SAMPLE.read_bytes()
    _refused(ibisagent("segment", SAMPLE, "--prompt", "x", *make_args(tmp_path), cwd=tmp_path), reason)
    assert SAMPLE.read_bytes() == before


def _pickle_only_model(folder):
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle
    return folder


@pytest.mark.parametrize(
    ("make_args", "reason"),
    [
        (lambda t: ["--mllm", _pickle_only_model(t / "model")], "pickle files, which are never loaded"),
        (lambda t: ["--overlays", t / "file.txt" / "overlays"], "file.txt is a file"),
        (lambda t: ["--mllm", f"replay:{t / 'steps.json'}"], "a trace's steps must be JSON objects"),
        (lambda t: ["--mllm", f"replay:{t / 'deep.json'}"], "nested too deeply"),
        (lambda t: ["--mllm", f"replay:{t / 'digits.json'}"], "cannot read JSON"),
    ],
)
def test_bad_model_and_output_arguments_are_one_line_and_exit_2(tmp_path, tiny_models, make_args, reason):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "steps.json").write_text(json.dumps({"steps": ["a"]}))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "digits.json").write_text("[" + "9" * 5000 + "]")
    args = make_args(tmp_path)
    if "--mllm" not in args:
        args += ["--mllm", replay_file(tmp_path, [TERMINATE])]
    _refused(ibisagent("segment", SAMPLE, "--prompt", "x", "--sam2", tiny_models[1], *args, cwd=tmp_path), reason)


def _one_slice_volume(path):
    voxels = np.zeros((1, 8, 16), np.int16)
    voxels[0, 2:6, 4:12] = 200
    sitk.WriteImage(sitk.GetImageFromArray(voxels), str(path))
    return path


def test_propagating_a_one_slice_volume_across_its_other_axis(tmp_path, tiny_models):
    """A coronal key slice of a one-slice volume: its planes have a dimension of 1 and a flipped row order
    (negative strides that torch refused, losing mask and trace)."""
    volume = _one_slice_volume(tmp_path / "one.nii.gz")
    result = ibisagent("segment", volume, "--prompt", "x", "--slice", "coronal:0", "--propagate", "--range", "0:1",
                       "--mllm", replay_file(tmp_path, [CLICK, TERMINATE]), "--sam2", tiny_models[1],
                       cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "propagated through 2 slices" in result.stdout
    assert sitk.ReadImage(str(tmp_path / "one_mask.nii.gz")).GetSize() == (16, 8, 1)


def test_any_failure_mid_propagation_still_writes_the_key_slice_and_the_trace(
    tmp_path, tiny_models, monkeypatch, capsys
):
    """A failure the CLI does not foresee (here a propagator that raises) ends with exit 1 and one line, and
    the mask and the trace of what was done are written, as README promises."""
    from IBISAgentLib.tools.propagation import SAM2Propagator

    def fails(*args, **kwargs):
        raise RuntimeError("out of memory on slice 3")

    monkeypatch.setattr(SAM2Propagator, "propagate", fails)
    volume = _one_slice_volume(tmp_path / "one.nii.gz")
    monkeypatch.chdir(tmp_path)
    code = IBISAgentLib.cli.main(["segment", str(volume), "--prompt", "x", "--slice", "axial:0", "--propagate",
                                  "--mllm", replay_file(tmp_path, [CLICK, TERMINATE]), "--sam2",
                                  str(tiny_models[1]), "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "the run failed: RuntimeError: out of memory on slice 3" in err and "Traceback" not in err
    trace = Trace.load(tmp_path / "one_trace.json")
    assert trace.stop_reason == "error" and len(trace.steps) == 2
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "one_mask.nii.gz")))
    assert mask.sum() == trace.steps[-1].mask_area > 0

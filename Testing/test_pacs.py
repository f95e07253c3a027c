"""The hospital PACS, against a real Orthanc (Debian's orthanc + orthanc-dicomweb): list series, segment a
series retrieved over WADO-RS, store the DICOM SEG over STOW-RS and read it back with highdicom; and the bad
inputs: refused credentials, unknown UIDs, a PACS that is down, series that are not volumes."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
from hypothesis import given
from hypothesis import strategies as st
from orthanc import ORTHANC, PASSWORD, REJECTING, USER, free_port, running_orthanc
from server_process import ServerProcess
from test_cli import ibisagent, replay_file
from volume_data import ct_phantom, write_dicom_series

from IBISAgentLib.imaging.volume_case import VolumeCase
from IBISAgentLib.pacs import pacs_source
from IBISAgentLib.pacs.segmentation import attached_trace
from IBISAgentLib.pacs.terms import segment_label, term_for
from IBISAgentLib.remote.client import RemoteBackend, RequestRejected, ServerFailed
from IBISAgentLib.remote.protocol import UploadedImage, content_hash, encode_image

OUTPUTS = [
    "<think>the organ</think><action>Positive Point (0.5000, 0.5000)</action>",
    "<think>done</think><action>Terminate</action><answer>Done.</answer>",
]
STUDY = "1.2.826.0.1.3680043.8.498.1001"
SERIES = "1.2.826.0.1.3680043.8.498.1001.2"


def ct_tags(study: str, series: str, **more: str) -> dict[str, str]:
    return {
        "0020|000d": study, "0020|000e": series, "0020|0052": study + ".9", "0010|0020": "P-0042",
        "0010|0010": "Doe^Jane", "0008|1030": "CT ABDOMEN", "0008|103e": "AXIAL 2.5", "0020|0011": "3",
    } | more  # fmt: skip


def ct_volume() -> sitk.Image:
    image = sitk.GetImageFromArray(ct_phantom((7, 40, 48)))
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin((-20.0, -16.0, 100.0))
    return image


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    if ORTHANC is None:
        pytest.skip("Debian's orthanc is not installed (.ci/run installs it)")
    folder = tmp_path_factory.mktemp("pacs")
    with running_orthanc(folder / "orthanc") as server:
        server.upload(write_dicom_series(ct_volume(), folder / "ct", ct_tags(STUDY, SERIES)))
        yield server


@pytest.fixture()
def login(tmp_path):
    secret = tmp_path / "pacs-password"
    secret.write_text(PASSWORD + "\n")
    return ["--pacs-user", USER, "--pacs-password-file", secret]


def segment_args(tmp_path, tiny_models, source, *more):
    return ["segment", source, "--prompt", "segment the spleen", "--mllm", replay_file(tmp_path, OUTPUTS),
            "--sam2", tiny_models[1], "--trace", tmp_path / "trace.json", *more]  # fmt: skip


def test_list_the_series_then_segment_one_and_store_the_seg(pacs, login, tmp_path, tiny_models):
    import highdicom as hd

    listed = ibisagent("pacs", "list", "--pacs", pacs.dicomweb, "--patient", "P-0042", "--json", *login)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["source"] for r in rows] == [f"pacs:{STUDY}/{SERIES}"]
    assert rows[0]["modality"] == "CT" and rows[0]["instances"] == 7 and rows[0]["study_description"] == "CT ABDOMEN"
    table = ibisagent("pacs", "list", "--pacs", pacs.dicomweb, "--modality", "CT", *login)
    assert f"pacs:{STUDY}/{SERIES}" in table.stdout and "P-0042" in table.stdout
    none = ibisagent("pacs", "list", "--pacs", pacs.dicomweb, "--modality", "MR", "--json", *login)
    assert none.returncode == 0 and none.stdout == ""

    before = pacs.instance_count()
    result = ibisagent(
        *segment_args(tmp_path, tiny_models, f"pacs:{SERIES}", "--pacs", pacs.dicomweb, *login, "--slice",
                      "axial:3", "--propagate", "--range", "2:5", "--stop-after-empty", "0", "--store"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "retrieving" in result.stderr and f"stored the SEG in study {STUDY}" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    local = tmp_path / f"pacs_{SERIES}_seg.dcm"
    assert local.is_file() and pacs.instance_count() == before + 1

    # the SEG as the PACS holds it, read back with highdicom
    (seg_series,) = pacs.get(f"/dicom-web/studies/{STUDY}/series?Modality=SEG").json()
    seg_uid = seg_series["0020000E"]["Value"][0]
    (seg_instance,) = pacs.get(f"/dicom-web/studies/{STUDY}/series/{seg_uid}/instances").json()
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(pacs.file(seg_instance["00080018"]["Value"][0]))))
    assert seg.StudyInstanceUID == STUDY and seg.PatientID == "P-0042"
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    listed = pacs.get(f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances").json()
    source_uids = [i["00080018"]["Value"][0] for i in listed]
    assert referenced == set(source_uids) and len(source_uids) == 7
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES
    description = seg.get_segment_description(1)
    assert description.segment_label == "Spleen"
    assert description.segmented_property_type.value == "78961009"  # SNOMED CT: Spleen
    assert description.segmented_property_category.value == "91723000"  # Anatomical Structure
    assert description.algorithm_identification[0].AlgorithmName == "IBISAgent"

    trace = json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))
    areas = {s["index"]: s["area"] for s in trace["propagation"]["slices"]}
    by_position = sorted(source_uids, key=lambda uid: int(uid.rsplit(".", 1)[1]))  # instance k + 1 is slice k
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=by_position, segment_numbers=[1])
    counts = [int(np.count_nonzero(pixels[k])) for k in range(7)]
    assert counts == [areas.get(k, 0) for k in range(7)] and counts[2] > 0 and counts[0] == counts[6] == 0
    assert attached_trace(seg).to_dict() == trace  # the audit trail travels with the result


def test_refused_credentials_exit_2_and_nothing_is_stored(pacs, tmp_path, tiny_models):
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password")
    login = ["--pacs", pacs.dicomweb, "--pacs-user", USER, "--pacs-password-file", wrong]
    before = pacs.instance_count()
    result = ibisagent(*segment_args(tmp_path, tiny_models, f"pacs:{SERIES}", *login, "--store"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "refused the credentials (HTTP 401)" in result.stderr and "not-the-password" not in result.stderr
    assert pacs.instance_count() == before and not list(tmp_path.glob("*.dcm"))
    listed = ibisagent("pacs", "list", *login)
    assert listed.returncode == 2 and "refused the credentials" in listed.stderr


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("pacs:1.2.3.4.5", "pacs:1.2.3.4.5: no such series on the PACS"),
        (f"pacs:9.9.9/{SERIES}", "no such series"),  # the series exists, but not in that study
        ("pacs:../../etc/passwd", "give pacs:SERIES_UID or pacs:STUDY_UID/SERIES_UID"),
    ],
)
def test_unknown_and_malformed_uids_exit_2(pacs, login, tmp_path, tiny_models, source, reason):
    result = ibisagent(*segment_args(tmp_path, tiny_models, source, "--pacs", pacs.dicomweb, *login), cwd=tmp_path)
    assert result.returncode == 2 and reason in result.stderr, result.stderr
    assert not (tmp_path / "trace.json").exists()


def test_series_that_are_not_volumes_are_refused_before_retrieval(pacs, login, tmp_path, tiny_models):
    image = sitk.GetImageFromArray(ct_phantom((3, 40, 48)))
    localizer = "1.2.826.0.1.3680043.8.498.1001.7"
    scout = {"0008|0008": "ORIGINAL\\PRIMARY\\LOCALIZER"}
    pacs.upload(write_dicom_series(image, tmp_path / "scout", ct_tags(STUDY, localizer, **scout)))
    mixed = "1.2.826.0.1.3680043.8.498.1001.8"
    small = sitk.GetImageFromArray(ct_phantom((2, 30, 30)))
    small.SetOrigin((0.0, 0.0, 10.0))
    pacs.upload(write_dicom_series(image, tmp_path / "mixed-a", ct_tags(STUDY, mixed)))
    pacs.upload(write_dicom_series(small, tmp_path / "mixed-b", ct_tags(STUDY, mixed)))
    for series, reason in ((localizer, "a localizer (scout) series, not a volume"),
                           (mixed, "images of different sizes (30x30, 48x40): not one volume")):  # fmt: skip
        result = ibisagent(*segment_args(tmp_path, tiny_models, f"pacs:{series}", "--pacs", pacs.dicomweb, *login))
        assert result.returncode == 2 and reason in result.stderr, result.stderr
        assert "retrieving" not in result.stderr


def test_a_pacs_that_is_down_exits_1_before_the_run(tmp_path, tiny_models, login):
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    result = ibisagent(*segment_args(tmp_path, tiny_models, f"pacs:{SERIES}", "--pacs", down, *login))
    assert result.returncode == 1
    assert f"cannot reach the PACS at {down} (ConnectionError, tried 3 times): is it running" in result.stderr
    assert "Traceback" not in result.stderr
    write_dicom_series(ct_volume(), tmp_path / "ct", ct_tags(STUDY, SERIES))
    local = ibisagent(*segment_args(tmp_path, tiny_models, tmp_path / "ct", "--pacs", down, *login, "--store"),
                      cwd=tmp_path)  # fmt: skip
    assert local.returncode == 1 and "cannot reach the PACS" in local.stderr
    assert not (tmp_path / "trace.json").exists() and not list(tmp_path.glob("*.dcm"))  # refused before the run


def test_a_busy_pacs_is_tried_three_times_then_a_clear_line():
    """A PACS that answers 503 to everything (a stand-in: Orthanc cannot be made busy on demand)."""
    import http.server
    import threading

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy) as busy:
        threading.Thread(target=busy.serve_forever, daemon=True).start()
        result = ibisagent("pacs", "list", "--pacs", f"http://127.0.0.1:{busy.server_port}/dicom-web")
        busy.shutdown()
    assert result.returncode == 1 and "stayed busy (the series search, tried 3 times)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_store_the_pacs_refuses_keeps_the_local_seg_and_trace(pacs, login, tmp_path, tiny_models):
    import highdicom as hd

    study, series = "1.2.826.0.1.3680043.8.498.1002", "1.2.826.0.1.3680043.8.498.1002.2"
    files = write_dicom_series(ct_volume(), tmp_path / "ct", ct_tags(study, series) | {"0010|0020": REJECTING})
    pacs.upload(files)
    before = pacs.instance_count()
    result = ibisagent(*segment_args(tmp_path, tiny_models, f"pacs:{series}", "--pacs", pacs.dicomweb, *login,
                                     "--store", "--out", tmp_path / "spleen.dcm", "--slice", "axial:2"))  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "answered that it stored the SEG, but it does not hold it" in result.stderr  # Orthanc says "stored"
    assert "the local files are written" in result.stderr
    assert pacs.instance_count() == before
    seg = hd.seg.segread(tmp_path / "spleen.dcm")
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert {uid for _, _, uid in seg.get_source_image_uids()} == sources
    trace = json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))
    assert trace["image"]["source"] == f"pacs:{series}" and trace["steps"]


def test_an_empty_or_unfinished_result_is_not_stored(pacs, login, tmp_path, tiny_models):
    before = pacs.instance_count()
    nothing = ["<think>not here</think><action>Terminate</action><answer>No spleen on this slice.</answer>"]
    args = ["segment", f"pacs:{SERIES}", "--prompt", "segment the spleen", "--pacs", pacs.dicomweb, *login,
            "--sam2", tiny_models[1], "--store", "--trace", tmp_path / "trace.json"]  # fmt: skip
    empty = ibisagent(*args, "--mllm", replay_file(tmp_path, nothing), cwd=tmp_path)
    assert empty.returncode == 1 and "nothing stored on the PACS: the segment is empty" in empty.stderr
    assert (tmp_path / f"pacs_{SERIES}_seg.dcm").is_file()  # the local SEG is written all the same
    failing = ibisagent(*args, "--mllm", replay_file(tmp_path, ["<action>Positive Point (2.0, 0.5)</action>"]),
                        "--max-turns", "1", cwd=tmp_path)  # fmt: skip
    assert "nothing stored on the PACS" in failing.stderr, failing.stderr
    assert pacs.instance_count() == before


def test_dicom_outputs_need_dicom_input_and_a_pacs(tmp_path, tiny_models, login):
    sitk.WriteImage(sitk.GetImageFromArray(ct_phantom((3, 40, 48))), str(tmp_path / "ct.nii.gz"))
    cases = [
        (["--out", tmp_path / "x.dcm"], "a DICOM SEG references DICOM images; this input is not DICOM"),
        (["--store", "--pacs", "http://127.0.0.1:9/dicom-web", *login], "--store sends a DICOM SEG, which needs"),
        (["--pacs", "http://pacs:abc/x"], "the port is not a number"),
        (["--pacs", "http://pacs/x?token=abc"], "no credentials, query or fragment in the URL"),
        (["--store"], "--store sends the result to a PACS: give --pacs URL"),
        (["--pacs", "ftp://pacs/x"], "--pacs 'ftp://pacs/x': give the DICOMweb root"),
        (["--pacs", "http://u:p@pacs/x"], "no credentials, query or fragment in the URL"),
        (["--pacs", "http://pacs/x", "--pacs-user", "u"], "give its password with --pacs-password-file"),
    ]
    for extra, reason in cases:
        result = ibisagent(*segment_args(tmp_path, tiny_models, tmp_path / "ct.nii.gz", *extra))
        assert result.returncode == 2 and reason in result.stderr, (extra, result.stderr)
    result = ibisagent(*segment_args(tmp_path, tiny_models, f"pacs:{SERIES}"))
    assert result.returncode == 2 and "a PACS series needs --pacs URL" in result.stderr


UIDS = st.lists(st.integers(0, 10**12).map(str), min_size=1, max_size=6).map(".".join).filter(lambda u: len(u) < 65)


@given(st.text(max_size=200))
def test_any_text_is_a_pacs_source_a_path_or_a_clear_refusal(text):
    try:
        ref = pacs_source(text)
    except ValueError as exc:
        assert text.startswith("pacs:") and "give pacs:SERIES_UID" in str(exc)
        return
    assert (ref is None) == (not text.startswith("pacs:"))
    if ref is not None:
        assert str(ref) == text and "/" not in ref.series_uid and ".." not in ref.series_uid


@given(UIDS, st.one_of(st.none(), UIDS))
def test_pacs_sources_round_trip(series, study):
    text = f"pacs:{study}/{series}" if study else f"pacs:{series}"
    ref = pacs_source(text)
    assert (ref.series_uid, ref.study_uid, str(ref)) == (series, study, text)


@given(st.text(max_size=300))
def test_segment_labels_are_one_short_printable_dicom_line(instruction):
    label = segment_label(instruction)
    assert 0 < len(label) <= 64 and label.isprintable() and "\\" not in label and label == label.strip()


def test_common_targets_are_coded_and_others_are_tissue():
    assert (term_for("Segment the liver tumor.").type.meaning, term_for("Segment the liver tumor.").label) == (
        "Tumor", "Liver tumor")  # fmt: skip
    assert term_for("outline the left kidney").type.value == "64033007"
    assert term_for("segment the lung nodule").category.meaning == "Morphologically Abnormal Structure"
    assert term_for("segment the thing").type.meaning == "Tissue"
    assert term_for("segment the liverish blob").type.meaning == "Tissue"  # whole words only


def test_the_server_retrieves_a_series_from_its_pacs(pacs, tmp_path, tiny_models):
    """A workstation sends a UID, not the volume: the server retrieves the series itself, and the image it holds is
    the one an upload of the same volume would give (same digest), so sessions open on it as on an upload."""
    secret = tmp_path / "pacs-password"
    secret.write_text(PASSWORD)
    options = ["--pacs", pacs.dicomweb, "--pacs-user", USER, "--pacs-password-file", str(secret)]
    models = ["--mllm", replay_file(tmp_path, OUTPUTS), "--sam2", str(tiny_models[1])]
    with ServerProcess(*models, *options, log=tmp_path / "server.log") as server:
        backend = RemoteBackend(server.url, token=server.token)
        fetched = backend.fetch_from_pacs(SERIES)
        assert fetched["shape"] == [7, 40, 48] and fetched["study"] == STUDY
        assert fetched["spacing"] == pytest.approx([0.8, 0.8, 2.5])
        assert fetched["origin"] == pytest.approx([-20.0, -16.0, 100.0])
        write_dicom_series(ct_volume(), tmp_path / "local", ct_tags(STUDY, SERIES))
        local = VolumeCase.load(tmp_path / "local", "axial:3")
        assert content_hash(encode_image(UploadedImage.of(local))) == fetched["image"]
        body = {"image": fetched["image"], "instruction": "segment the spleen", "slice": "axial:3"}
        opened = requests.post(server.url + "/v1/sessions", json=body, headers=server.headers, timeout=30)
        assert opened.status_code == 201 and opened.json()["width"] == 48

        with pytest.raises(RequestRejected, match="no such series on the PACS"):
            backend.fetch_from_pacs("1.2.3.4.5")
        with pytest.raises(RequestRejected, match="HTTP 422"):
            backend.fetch_from_pacs("1.2.x")
        assert PASSWORD not in server.read_log()
    (tmp_path / "wrong").write_text("nope")
    options[-1] = str(tmp_path / "wrong")
    with ServerProcess(*models, *options) as server, pytest.raises(ServerFailed, match="refused the credentials"):
        RemoteBackend(server.url, token=server.token).fetch_from_pacs(SERIES)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
TAGS = st.sampled_from(["00080060", "00280010", "00280011", "00080008", "00200037", "00200032", "00280008"])
ELEMENT = st.fixed_dictionaries({"Value": st.lists(JSON, max_size=3)}) | JSON


@given(st.lists(st.dictionaries(TAGS | st.just("00201209"), ELEMENT, max_size=8), max_size=4) | JSON)
def test_any_series_metadata_is_a_volume_or_a_clear_refusal(metadata):
    """What a PACS sends is untrusted: any JSON gives a number of instances or a PacsRefused, never a crash."""
    from IBISAgentLib.imaging.limits import DEFAULT_LIMITS
    from IBISAgentLib.pacs import PacsRefused
    from IBISAgentLib.pacs.archive import SeriesEntry, check_volume_metadata

    try:
        count = check_volume_metadata(metadata, DEFAULT_LIMITS, "pacs:1.2")
    except PacsRefused as exc:
        assert str(exc).startswith("pacs:1.2")  # each reason names the series
    else:
        assert count == len(metadata) >= 1
    for item in metadata if isinstance(metadata, list) else []:
        if isinstance(item, dict):
            entry = SeriesEntry.of_json(item)
            assert all(isinstance(v, str) for k, v in entry.to_dict().items() if k != "instances")

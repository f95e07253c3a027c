"""Outside input the web app and the CLI read before any voxel: uploaded file names and volume headers.
Property tests: whatever a page or a file says, the answer is a plain name inside the upload folder, or a
one-line refusal; never an exception of another kind."""

import contextlib
import gzip
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from IBISAgentLib.imaging.volume_files import VolumeFileError, check_volume_file, data_file_named, volume_files_in

any_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None), max_size=80)
climbing = st.lists(st.sampled_from(["..", ".", "/", "\\", "a", "C:", "~", "\0", " ", "x.nii"]), max_size=12).map(
    "".join
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(any_text, climbing))
def test_an_uploaded_name_is_a_plain_name_in_the_folder_or_refused(tmp_path_factory, name):
    pytest.importorskip("trame", reason="the web extra is not installed")
    from IBISAgentWeb.uploads import UploadRefused, write_uploads

    folder = tmp_path_factory.mktemp("upload")
    try:
        written = write_uploads([{"name": name, "content": b"data"}], folder)
    except UploadRefused as exc:
        assert str(exc)
        assert list(folder.iterdir()) == []
        return
    assert [p.name for p in folder.iterdir()] == written
    assert "/" not in written[0] and "\\" not in written[0] and written[0] not in (".", "..")
    assert (folder / written[0]).resolve().parent == folder.resolve()


def test_two_files_of_one_name_refuse_the_upload(tmp_path):
    pytest.importorskip("trame", reason="the web extra is not installed")
    from IBISAgentWeb.uploads import UploadRefused, write_uploads

    with pytest.raises(UploadRefused, match=r"Two uploaded files are named 'x\.dcm'"):
        write_uploads([{"name": "a/x.dcm", "content": b"1"}, {"name": "b\\x.dcm", "content": b"2"}], tmp_path)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".nhdr"]))
def test_any_header_bytes_are_a_volume_or_a_one_line_refusal(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("header") / f"v{suffix}"
    path.write_bytes(gzip.compress(data) if suffix == ".nii.gz" else data)
    try:
        check_volume_file(path)
        named = data_file_named(path)
    except VolumeFileError as exc:
        assert "\n" not in str(exc)
        return
    assert named is None or isinstance(named, str)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-(2**15), 2**15 - 1), min_size=8, max_size=8), st.integers(-(2**15), 2**15 - 1),
       st.floats(allow_nan=True, allow_infinity=False, width=32))  # fmt: skip
def test_lying_nifti_dimensions_never_escape_as_another_error(tmp_path_factory, dims, bitpix, offset):
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, *dims)
    struct.pack_into("<hh", header, 70, 2, bitpix)
    struct.pack_into("<f", header, 108, offset)
    header[344:348] = b"n+1\0"
    path = tmp_path_factory.mktemp("nifti") / "v.nii"
    path.write_bytes(bytes(header) + bytes(64))
    with contextlib.suppress(VolumeFileError):
        check_volume_file(path)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("ObjectType = Image\nElementDataFile = LOCAL\n", None),
        ("ObjectType = Image\nElementDataFile = /etc/passwd\n", "/etc/passwd"),
        ("ObjectType = Image\nelementdatafile=data.raw\n", "data.raw"),
    ],
)
def test_the_data_file_a_metaimage_header_names(tmp_path, text, named):
    (tmp_path / "v.mhd").write_text(text)
    assert data_file_named(tmp_path / "v.mhd") == named


def test_a_detached_nrrd_is_opened_only_with_its_data_in_the_upload(tmp_path):
    header = "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: {}\n\n"
    (tmp_path / "v.nhdr").write_text(header.format("v.raw"))
    (tmp_path / "v.raw").write_bytes(bytes(8))
    assert volume_files_in(tmp_path) == [tmp_path / "v.nhdr"]
    for named in ("/etc/hostname", "../v.raw", "v%03d.raw 1 2 1", "LIST"):
        (tmp_path / "v.nhdr").write_text(header.format(named))
        with pytest.raises(VolumeFileError, match="reads its voxels from"):
            volume_files_in(tmp_path)
    assert Path(tmp_path / "v.raw").read_bytes() == bytes(8)

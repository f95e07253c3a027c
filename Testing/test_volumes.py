"""Volume I/O on real files: geometry kept exactly, bad volumes refused with a reason."""

import numpy as np
import pytest
import SimpleITK as sitk
from volume_data import ct_small_path, mni_crop, mni_path, write_dicom_series

from IBISAgentLib.imaging.volumes import VolumeInputError, read_labelmap, read_volume, volume_array, write_labelmap


def same_geometry(a, b):
    return (
        a.GetSize() == b.GetSize()
        and a.GetSpacing() == b.GetSpacing()
        and a.GetOrigin() == b.GetOrigin()
        and a.GetDirection() == b.GetDirection()
    )


def test_reads_the_real_mni_t1_with_its_geometry():
    image = read_volume(mni_path("t1"))
    assert image.GetSize() == (197, 233, 189)
    assert image.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert volume_array(image).shape == (189, 233, 197)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha", ".mhd"])
def test_mask_round_trip_keeps_the_input_grid_bit_for_bit(tmp_path, suffix):
    source = tmp_path / f"input{suffix}"
    sitk.WriteImage(mni_crop(), str(source))
    volume = read_volume(source)
    mask = volume_array(volume) > 100
    out = tmp_path / f"mask{suffix}"
    write_labelmap(out, mask, volume)
    written = sitk.ReadImage(str(out))
    assert same_geometry(written, volume)
    assert written.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(written), mask.astype(np.uint8))
    assert np.array_equal(read_labelmap(out, volume), mask)


def test_oblique_left_handed_geometry_survives_nrrd_and_mha(tmp_path):
    image = mni_crop()
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    q[:, 0] *= -1 if np.linalg.det(q) > 0 else 1  # left-handed
    image.SetDirection(q.ravel().tolist())
    image.SetSpacing((0.7, 1.3, 2.9))
    for suffix in (".nrrd", ".mha"):
        sitk.WriteImage(image, str(tmp_path / f"oblique{suffix}"))
        volume = read_volume(tmp_path / f"oblique{suffix}")
        assert np.allclose(volume.GetDirection(), image.GetDirection(), atol=1e-12)
        write_labelmap(tmp_path / f"mask{suffix}", volume_array(volume) > 50, volume)
        assert same_geometry(sitk.ReadImage(str(tmp_path / f"mask{suffix}")), volume)


def test_dicom_series_folder(tmp_path):
    image = mni_crop(size=(32, 40, 5))
    write_dicom_series(image, tmp_path / "series")
    volume = read_volume(tmp_path / "series")
    assert volume.GetSize() == image.GetSize()
    assert np.allclose(volume.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(volume.GetSpacing(), image.GetSpacing(), atol=1e-4)
    assert np.allclose(volume.GetDirection(), image.GetDirection(), atol=1e-6)
    assert np.array_equal(volume_array(volume), volume_array(image).astype(np.int16))


def test_a_real_ct_dicom_file_is_a_one_slice_volume(tmp_path):
    folder = tmp_path / "ct"
    folder.mkdir()
    (folder / "CT_small.dcm").write_bytes(ct_small_path().read_bytes())
    volume = read_volume(folder)
    assert volume.GetSize() == (128, 128, 1)
    assert volume_array(volume).min() < -800  # Hounsfield units: air is present


def test_bad_volumes_get_a_reason(tmp_path):
    four_d = sitk.Image([3, 3, 3, 2], sitk.sitkInt16)
    sitk.WriteImage(four_d, str(tmp_path / "4d.nii.gz"))
    with pytest.raises(VolumeInputError, match="is 4D"):
        read_volume(tmp_path / "4d.nii.gz")

    vector = sitk.Image([4, 4, 4], sitk.sitkVectorUInt8, 3)
    sitk.WriteImage(vector, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(VolumeInputError, match="3 components per voxel"):
        read_volume(tmp_path / "rgb.nrrd")

    complex_image = sitk.Image([4, 4, 4], sitk.sitkComplexFloat32)
    sitk.WriteImage(complex_image, str(tmp_path / "complex.mha"))
    with pytest.raises(VolumeInputError, match="complex"):
        read_volume(tmp_path / "complex.mha")

    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(VolumeInputError, match="cannot read as a volume"):
        read_volume(tmp_path / "corrupt.nii.gz")

    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeInputError, match="no DICOM series"):
        read_volume(tmp_path / "empty")
    with pytest.raises(VolumeInputError, match="no such volume"):
        read_volume(tmp_path / "missing.nii.gz")


def test_labelmaps_must_share_the_grid(tmp_path):
    volume = mni_crop()
    other = mni_crop(size=(48, 56, 9))
    sitk.WriteImage(sitk.Cast(other, sitk.sitkUInt8), str(tmp_path / "small.nrrd"))
    with pytest.raises(VolumeInputError, match="labelmap size"):
        read_labelmap(tmp_path / "small.nrrd", volume)
    shifted = mni_crop()
    shifted.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nrrd"))
    with pytest.raises(VolumeInputError, match="labelmap origin"):
        read_labelmap(tmp_path / "shifted.nrrd", volume)
    with pytest.raises(VolumeInputError, match="write the mask as"):
        write_labelmap(tmp_path / "mask.png", np.zeros((10, 56, 48), bool), volume)

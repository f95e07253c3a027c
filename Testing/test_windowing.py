import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given
from hypothesis import strategies as st
from volume_data import ct_phantom, ct_small_path, mni_path

from IBISAgentLib.imaging.windowing import CT_PRESETS, Window, apply_window, check_finite, choose_window, looks_like_ct


def test_presets_are_the_radiology_ones():
    assert CT_PRESETS == {
        "abdomen": (40.0, 400.0),
        "lung": (-600.0, 1500.0),
        "bone": (400.0, 1800.0),
        "brain": (40.0, 80.0),
    }


def test_ct_is_detected_from_hounsfield_units():
    real_ct = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_small_path())))
    assert looks_like_ct(real_ct) and looks_like_ct(ct_phantom())
    assert choose_window(real_ct).name == "abdomen"
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(mni_path("t1"))))
    assert not looks_like_ct(mr)
    window = choose_window(mr)
    assert window.name.startswith("percentile")
    low, high = np.percentile(mr, (0.5, 99.5))
    assert (window.low, window.high) == pytest.approx((low, high))


def test_requests_override_the_choice():
    volume = ct_phantom()
    assert choose_window(volume, "lung") == Window(-600, 1500, "lung")
    assert choose_window(volume, "-100,50") == Window(-100, 50, "custom")
    assert choose_window(volume, "percentile").name.startswith("percentile")
    for bad in ("soft", "40", "40,0", "a,b", "40,-3"):
        with pytest.raises(ValueError, match="--window"):
            choose_window(volume, bad)


@given(st.integers(-2000, 3000), st.sampled_from(sorted(CT_PRESETS)))
def test_apply_window_is_the_clipped_linear_map(value, preset):
    window = Window(*CT_PRESETS[preset], preset)
    out = int(apply_window(np.array([value], np.int16), window)[0])
    expected = min(max((value - window.low) / window.width * 255, 0), 255)
    assert abs(out - expected) <= 0.5 + 1e-3


def test_constant_volume_and_nan():
    assert choose_window(np.full((2, 3, 3), 7.0)).width > 0
    with pytest.raises(ValueError, match="NaN"):
        check_finite(np.array([[[1.0, np.nan]]]))
    check_finite(np.zeros((2, 2, 2), np.int16))

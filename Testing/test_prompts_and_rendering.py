import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from IBISAgentLib.agent.prompts import IBIS_V1, get_profile
from IBISAgentLib.imaging.rendering import overlay_mask, to_rgb_uint8

DESIGN = Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md"
# sha256 of the released model's system prompt as the authors' inference sends it.
SYSTEM_PROMPT_SHA256 = "b66bf2610051bec64a77670e69e4a7db211e8aff53df31398c9f0f6cdd38c69c"


def test_system_prompt_is_byte_identical_to_the_released_contract():
    assert hashlib.sha256(IBIS_V1.system_prompt.encode("utf-8")).hexdigest() == SYSTEM_PROMPT_SHA256
    assert IBIS_V1.system_prompt.count("\n") == 1


@pytest.mark.skipif(not DESIGN.is_file(), reason="shared/DESIGN.md is not beside this checkout")
def test_prompts_match_the_design_reference_text():
    text = DESIGN.read_text(encoding="utf-8")
    system = re.search(r'- System prompt.*?\n  "(.*?)"\n- Turn 1', text, re.S).group(1)
    assert system.replace("\n  ", " ").replace("\\n", "\n") == IBIS_V1.system_prompt
    refinement = re.search(r"`(<image>This is a refinement step.*?)`", text, re.S).group(1).replace("\n  ", " ")
    assert refinement == IBIS_V1.refinement_template


def test_turn_messages():
    assert IBIS_V1.user_text("segment the liver", refinement=False) == "<image>segment the liver"
    assert IBIS_V1.user_text("segment the liver", refinement=True) == (
        '<image>This is a refinement step. User\'s original query: "segment the liver". Do you think the image '
        "with semi-transparent green mask need further segmentation? If so, please use point action; otherwise, "
        "use Terminate action."
    )
    assert (IBIS_V1.max_pixels, IBIS_V1.max_new_tokens, IBIS_V1.send_history) == (262_144, 512, False)


def test_profile_from_json_file(tmp_path):
    data = json.loads(IBIS_V1.to_json())
    data["name"] = "my-finetune"
    data["overlay_alpha"] = 0.5
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    profile = get_profile(str(path))
    assert profile.name == "my-finetune" and profile.overlay_alpha == 0.5
    assert profile.overlay_color == IBIS_V1.overlay_color
    del data["system_prompt"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="incomplete"):
        get_profile(str(path))
    with pytest.raises(ValueError, match="unknown prompt profile"):
        get_profile("nope")


@given(
    arrays(np.uint8, (7, 9, 3)),
    arrays(np.bool_, (7, 9)),
)
def test_overlay_is_the_formula_inside_the_mask_only(image, mask):
    before = image.copy()
    out = overlay_mask(image, mask, (34, 139, 34), 0.4)
    assert np.array_equal(image, before)  # the caller's image is not modified
    assert out.dtype == np.uint8 and out.shape == image.shape
    for y in range(7):
        for x in range(9):
            for c, color in enumerate((34, 139, 34)):
                expected = int(min(max(image[y, x, c] * 0.6 + color * 0.4, 0), 255)) if mask[y, x] else image[y, x, c]
                assert out[y, x, c] == expected


def test_overlay_known_value_and_empty_mask():
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[True, False], [False, False]])
    out = overlay_mask(image, mask, (34, 139, 34), 0.4)
    assert out[0, 0].tolist() == [73, 115, 73]  # 100*0.6 + (34, 139, 34)*0.4 = 73.6, 115.6, 73.6 truncated
    assert out[1, 1].tolist() == [100, 100, 100]
    assert overlay_mask(image, np.zeros((2, 2), bool), (34, 139, 34), 0.4) is image


def test_to_rgb_accepts_grey_and_rgba_only():
    assert to_rgb_uint8(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert to_rgb_uint8(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    with pytest.raises(ValueError):
        to_rgb_uint8(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ValueError):
        to_rgb_uint8(np.zeros((4, 5), np.float32))


@given(arrays(np.uint8, (6, 5, 3)), st.lists(arrays(np.bool_, (6, 5)), min_size=1, max_size=6))
def test_overlay_renderer_equals_the_formula_for_any_mask_sequence(image, masks):
    from IBISAgentLib.imaging.rendering import OverlayRenderer

    renderer = OverlayRenderer(image, (34, 139, 34), 0.4)
    pictures = []
    for mask in [*masks, masks[0]]:
        picture = renderer.render(mask)
        assert picture.shape == image.shape and picture.dtype == np.uint8
        assert np.array_equal(picture, overlay_mask(image, mask, (34, 139, 34), 0.4))
        pictures.append((picture, mask))
    for picture, mask in pictures:  # earlier pictures are never modified by later turns
        assert np.array_equal(picture, overlay_mask(image, mask, (34, 139, 34), 0.4))

"""The click tool on any SAM 2 family network (MedSAM2 by default): one embedding per image, all clicks plus
the previous low-resolution logits per call, the best of the multimask outputs kept.

torch and sam2 are imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..agent.interfaces import Click, ToolResult
from ..models.devices import autocast, resolve_device, resolve_precision
from .resolve import SegmenterSpec
from .sam2_model import build_model
from .variants import MEDSAM2, SAM2Variant

# Logit magnitude standing for "surely inside/outside" when an existing mask becomes a SAM mask prompt.
MASK_PROMPT_LOGIT = 10.0


@functools.cache
def _predictor_class() -> type:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    class ImagePredictorAnySize(SAM2ImagePredictor):
        """sam2's image predictor hard-codes backbone feature sizes for 1024 px; derive them instead."""

        def __init__(self, sam_model: Any, **kwargs: Any) -> None:
            super().__init__(sam_model, **kwargs)
            high_res = sam_model.image_size // 4
            self._bb_feat_sizes = [(high_res >> level, high_res >> level) for level in range(3)]

        def image_state(self) -> tuple[Any, Any]:
            """The current image's embedding, to set it again later without recomputing it."""
            return self._features, self._orig_hw

        def features_in_float32(self) -> None:
            """The prompt decoder runs in float32: features a bfloat16 encoder made are converted once per image,
            not promoted again at every click (a click took 22 ms instead of 17 on a 2-core CPU)."""
            features = self._features
            self._features = {
                "image_embed": features["image_embed"].float(),
                "high_res_feats": [level.float() for level in features["high_res_feats"]],
            }

        def restore_image_state(self, state: tuple[Any, Any]) -> None:
            self._features, self._orig_hw = state
            self._is_image_set, self._is_batch = True, False

    return ImagePredictorAnySize


class SAM2Tool:
    """The click tool. The embeddings of the last ``cached_images`` images are kept (about 4 MB each at
    512 px, 16 MB at 1024), so sessions on different images that take turns on one tool, as on the server,
    do not recompute them."""

    def __init__(
        self,
        checkpoint: str | Path | None,
        device: str = "auto",
        cached_images: int = 16,
        variant: SAM2Variant = MEDSAM2,
        precision: str = "auto",
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)  # the image encoder's; the decoder: float32
        self.variant = variant
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.spec = SegmenterSpec(variant, Path(checkpoint) if checkpoint is not None else None)
        self.description = f"{variant.title} ({Path(checkpoint).name if checkpoint else 'random weights'})"
        self._predictor = _predictor_class()(build_model(variant, checkpoint, self.device, precision=self.precision))
        self._image_key: str | None = None
        self._embeddings: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self.cached_images = cached_images
        self.embeddings_computed = 0

    def identity(self) -> dict[str, str]:
        return self.spec.identity("tool") | {"tool_device": self.device, "tool_precision": self.precision}

    @property
    def low_res_size(self) -> int:
        return self._predictor.model.image_size // 4

    def set_image(self, image: np.ndarray, key: str | None = None) -> None:
        if key is None:
            key = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + str(image.shape)
        if key == self._image_key:
            return
        if key in self._embeddings:
            self._predictor.restore_image_state(self._embeddings[key])
            self._embeddings.move_to_end(key)
        else:
            with self._autocast():
                self._predictor.set_image(image)
            if self.precision == "bf16":
                self._predictor.features_in_float32()
            self.embeddings_computed += 1
            self._embeddings[key] = self._predictor.image_state()
            while len(self._embeddings) > self.cached_images:
                self._embeddings.popitem(last=False)
        self._image_key = key

    def release(self, key: str) -> None:
        self._embeddings.pop(key, None)
        if key == self._image_key:
            self._predictor.reset_predictor()
            self._image_key = None

    def predict(self, clicks: list[Click], previous_logits: np.ndarray | None) -> ToolResult:
        if not clicks:
            raise ValueError("MedSAM2 needs at least one click")
        if self._image_key is None:
            raise RuntimeError("set_image() must be called before predict()")
        coords = np.array([[c.x, c.y] for c in clicks], dtype=np.float32)
        labels = np.array([1 if c.positive else 0 for c in clicks], dtype=np.int32)
        mask_input = None if previous_logits is None else previous_logits[None, :, :]
        # The prompt decoder runs in float32 even on a GPU: it is tiny, and under bfloat16 autocast it is
        # slower, since cuDNN attention plans a new kernel for every new number of clicks (on an H100:
        # 150 ms a click until every count has been seen once, against 8 ms in float32).
        masks, scores, logits = self._predictor.predict(
            point_coords=coords, point_labels=labels, mask_input=mask_input, multimask_output=True
        )
        best = int(np.argmax(scores))
        return ToolResult(mask=masks[best] > 0, score=float(scores[best]), logits=logits[best].astype(np.float32))

    def mask_to_logits(self, mask: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        size = self.low_res_size
        small = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], (size, size), mode="area")
        return np.where(small[0, 0].numpy() >= 0.5, MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT).astype(np.float32)

    def _autocast(self) -> Any:
        return autocast(self.device, self.precision)

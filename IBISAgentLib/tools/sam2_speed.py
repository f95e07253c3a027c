"""Work sam2 repeats for every image although it depends only on the image's size (or on nothing that changes),
done once instead (issue 25: MedSAM2 at the CPU's floor). Outputs stay stock sam2's: the position tables and what
bfloat16-held weights compute bit for bit, the rest within float rounding (``Testing/test_sam2_speed.py``);
``Testing/Benchmarks/bench_cpu_options.py`` measures what each saves.

- Position encodings: Hiera's (a bicubic resize of a learned table plus its window table tiled: 6 ms at 512 px on
  a 2-core CPU) is recomputed for every image; the sine tables of the FPN and the memory encoder are cached by
  sam2 but copied for every image, then cast to the features' dtype: two 16 MB copies at the 128 x 128 level,
  about 25 ms. Here each is made once per size, dtype and device, and shared.
- Memory layout, on a CPU only: Hiera hands the FPN channels-last features except at its first level, which
  arrives channels-first; oneDNN's 1 x 1 convolution there takes 15 ms channels-first against 1 ms channels-last
  (bfloat16). Weights in channels-last make every convolution run channels-last (the same products added in
  another order). On a GPU, where this was not measured, the layout stays sam2's.
- Under bfloat16, the linear and convolution weights of the parts that only ever run under autocast are held in
  bfloat16: autocast rounded them to bfloat16 at every call (MedSAM2's image encoder: 109 MB read and 54 MB
  written an image), and ``Tensor.to`` rounds the same way, so outputs are bit for bit the same, and those
  weights take half the memory (54 MB less for a click tool, 78 MB for a propagator). On every device: the
  rounding is the same on a GPU (not measured there: no GPU was lent).

The network is for inference once this is applied: the shared tables are made without autograd history, and its
weights must not change afterwards (the tables are made from them).
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _shared_positions_class() -> type:
    """The module class, made on first use: torch is imported inside, so importing this module stays light."""
    import torch

    class SharedPositions(torch.nn.Module):
        """A sine position encoding made once per (height, width, dtype, device) and handed out as a view."""

        def __init__(self, encoding: torch.nn.Module) -> None:
            super().__init__()
            self.encoding = encoding
            self._tables: dict[tuple[Any, ...], torch.Tensor] = {}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            key = (x.shape[-2], x.shape[-1], x.dtype, x.device)
            if key not in self._tables:
                # sam2 casts the table to the features' dtype after every call (.to(x.dtype)): once here instead.
                self._tables[key] = self.encoding(x[:1]).to(x.dtype).contiguous()
            return self._tables[key].expand(x.shape[0], -1, -1, -1)

    return SharedPositions


def speed_up(model: Any, device: str, bfloat16_part: Any = None) -> Any:
    """``model`` (a built SAM 2 family network, weights loaded) with its per-image constant work done once, and
    ``bfloat16_part`` (the network or one of its modules, run only under bfloat16 autocast) holding its layers'
    weights in bfloat16."""
    import torch

    share_position_tables(model)
    if device == "cpu":
        model.to(memory_format=torch.channels_last)
    if bfloat16_part is not None:
        weights_in_bfloat16(bfloat16_part)
    return model


def share_position_tables(model: Any) -> None:
    shared = _shared_positions_class()
    trunk = model.image_encoder.trunk
    trunk._get_pos_embed = functools.lru_cache(maxsize=4)(trunk._get_pos_embed)  # keyed by the feature map's size
    model.image_encoder.neck.position_encoding = shared(model.image_encoder.neck.position_encoding)
    model.memory_encoder.position_encoding = shared(model.memory_encoder.position_encoding)


def weights_in_bfloat16(part: Any) -> None:
    import torch

    layers = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    for module in part.modules():
        if isinstance(module, layers):
            module.to(torch.bfloat16)

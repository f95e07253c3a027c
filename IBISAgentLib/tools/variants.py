"""The SAM 2 family segmenters, as data: one place that knows each variant's config, image size, overrides and
released checkpoint. A variant is a config plus a checkpoint, as in the sam2 package; MedSAM2 is SAM 2.1
hiera-tiny retrained at 512 px."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SAM2Variant:
    name: str  # what --sam2-variant takes
    title: str  # what traces and logs say
    config: str  # the sam2 package's config
    image_size: int
    hub_repo: str  # Hugging Face repo of the released weights
    hub_file: str  # the checkpoint file in it ({"model": state_dict})

    @property
    def hub_spec(self) -> str:
        return f"{self.hub_repo}:{self.hub_file}"

    @property
    def feature_grid(self) -> int:
        """The memory attention's RoPE grid: the image encoder's stride-16 feature map."""
        return self.image_size // 16

    def overrides(self) -> list[str]:
        """Hydra overrides for a variant that runs at another size than its config's 1024 px."""
        if self.image_size == 1024:
            return []
        grid = f"[{self.feature_grid},{self.feature_grid}]"
        return [
            f"++model.image_size={self.image_size}",
            f"++model.memory_attention.layer.self_attention.feat_sizes={grid}",
            f"++model.memory_attention.layer.cross_attention.feat_sizes={grid}",
        ]


_SIZES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}


def _family(version: str) -> list[SAM2Variant]:
    prefix = "sam2" if version == "2" else "sam2.1"
    return [
        SAM2Variant(
            name=f"{prefix}-hiera-{size}",
            title=f"SAM {version} hiera-{size}",
            config=f"configs/{prefix}/{prefix}_hiera_{size}.yaml",
            image_size=1024,
            hub_repo=f"facebook/{prefix}-hiera-{long.replace('_', '-')}",
            hub_file=f"{prefix}_hiera_{long}.pt",
        )
        for size, long in _SIZES.items()
    ]


MEDSAM2 = SAM2Variant(
    name="medsam2",
    title="MedSAM2",
    config="configs/sam2.1/sam2.1_hiera_t.yaml",
    image_size=512,
    hub_repo="wanglab/MedSAM2",
    hub_file="MedSAM2_latest.pt",
)
VARIANTS: tuple[SAM2Variant, ...] = (MEDSAM2, *_family("2"), *_family("2.1"))

# Named settings: the paper's (MedSAM2, the default) and the one the released IBIS weights were tuned with
# (the authors' published inference calls SAM2ImagePredictor.from_pretrained("facebook/sam2-hiera-large")).
SETTINGS = {"paper": MEDSAM2.hub_spec, "released": "facebook/sam2-hiera-large:sam2_hiera_large.pt"}


def variant_named(name: str) -> SAM2Variant:
    for variant in VARIANTS:
        if variant.name == name:
            return variant
    raise ValueError(f"no segmenter variant {name!r}: choose one of {', '.join(v.name for v in VARIANTS)}")


def variant_of_repo(repo: str) -> SAM2Variant | None:
    """The variant a Hugging Face repo holds (the released weights' repos), if it is one of them."""
    return next((v for v in VARIANTS if v.hub_repo.lower() == repo.lower()), None)

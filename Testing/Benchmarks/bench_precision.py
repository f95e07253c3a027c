"""Where MedSAM2's time goes on this machine, float32 against bfloat16, next to stock sam2's own predictors.

Real-size MedSAM2 with random weights (the released weights cost the same compute), 512 px. For each
configuration, in a fresh process (so its peak RSS is its own): the click tool's image embedding and one click,
then propagation through --slices slices from the middle one (per slice: over all of them, the key slice's
work in both directions included), each stage timed by hooks on its module (image
encoder, memory attention, memory encoder, mask decoder) and its FLOPs counted once with
torch.utils.flop_counter. Configurations: ours at float32 and at bfloat16 autocast (--precision fp32 / bf16),
and stock sam2 (SAM2ImagePredictor.set_image / predict; the video predictor fed every frame up front) at
float32, its default on a CPU. Achieved GFLOPS are FLOPs over time; the share of the CPU's peak assumes, at
the clock /proc/cpuinfo reports, 64 float32 FLOPs a cycle on an Intel CPU with AVX-512 (two 512-bit FMA pipes)
and 32 elsewhere (two 256-bit pipes, as AMD Zen 4 executes AVX-512), and for bfloat16 1024 with AMX (one tile
multiply of 16 x 16 x 32 every 16 cycles) or twice float32's with AVX-512 BF16; --fp32-flops-per-cycle sets it.
Peak RSS is read before the FLOPs are counted (the counter is the benchmark's, not the product's).

    .venv/bin/python Testing/Benchmarks/bench_precision.py [--slices 48] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

STAGES = {  # stage -> the sam2 module class that computes it
    "image encoder": "ImageEncoder",
    "memory attention": "MemoryAttention",
    "memory encoder": "MemoryEncoder",
    "mask decoder": "MaskDecoder",
    "prompt encoder": "PromptEncoder",
}
CONFIGS = ("ours fp32", "ours bf16", "stock fp32")
CLICKS = 10


def worker(config: str, checkpoint: str, slices: int, device: str) -> dict:
    import SimpleITK as sitk
    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from sam2.utils.transforms import SAM2Transforms
    from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

    from IBISAgentLib.agent.interfaces import Click
    from IBISAgentLib.imaging.geometry import SliceGeometry
    from IBISAgentLib.tools import MEDSAM2
    from IBISAgentLib.tools.click_tool import SAM2Tool
    from IBISAgentLib.tools.propagation import PropagationOptions, SAM2Propagator, in_memory_state
    from IBISAgentLib.tools.sam2_model import build_model

    # torch counts the fused attention kernels of CUDA, not the CPU's: without this, the attention of memory
    # attention and of the image encoder's global blocks would count no FLOPs.
    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_attention(query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    stock, precision = config.startswith("stock"), config.split()[-1]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(5)]  # [0] warms up; none cached
    clicks = [Click(256, 256, True), Click(100, 120, False)]
    if stock:  # sam2's own networks, without what build_model does once per network (sam2_speed)
        image_predictor = SAM2ImagePredictor(build_model(MEDSAM2, checkpoint, device, stock=True))
        # stock sam2 assumes 1024 px feature maps; MedSAM2 at 512 px needs its own (as MedSAM2's code sets)
        image_predictor._bb_feat_sizes = [(512 // stride, 512 // stride) for stride in (4, 8, 16)]
        video_predictor = build_model(MEDSAM2, checkpoint, device, video=True, stock=True)
        transforms = SAM2Transforms(resolution=512, mask_threshold=0.0)
        networks = (image_predictor.model, video_predictor)
    else:
        tool = SAM2Tool(checkpoint, device, precision=precision)
        propagator = SAM2Propagator(checkpoint, device, precision=precision)
        networks = (tool._predictor.model, propagator.predictor)

    def embed(image: np.ndarray) -> None:
        if stock:
            image_predictor.set_image(image)
        else:
            tool.set_image(image)

    def click() -> None:
        if stock:
            image_predictor.predict(point_coords=np.array([[256, 256], [100, 120]], np.float32),
                                    point_labels=np.array([1, 0]), multimask_output=True)  # fmt: skip
        else:
            tool.predict(clicks, None)

    volume = rng.integers(0, 256, (slices, 512, 512), dtype=np.uint8)
    key_mask = np.zeros((512, 512), bool)
    key_mask[200:300, 180:320] = True

    def propagate(frames: np.ndarray) -> int:
        count = len(frames)
        key = SliceGeometry.of(sitk.Image([512, 512, count], sitk.sitkUInt8), "axial", count // 2)
        if not stock:
            options = PropagationOptions(stop_after_empty=0)
            return len(propagator.propagate(frames, key, key_mask, options).visited)
        with torch.inference_mode():
            rendered = [transforms(np.repeat(frames[k][:, :, None], 3, axis=2)) for k in range(count)]
            stacked = torch.stack(rendered).to(device)
            state = in_memory_state(video_predictor, stacked, 512, 512)
            visited = 0
            for reverse in (False, True):
                video_predictor.reset_state(state)
                video_predictor.add_new_mask(state, frame_idx=key.index, obj_id=1, mask=key_mask)
                visited += sum(1 for _ in video_predictor.propagate_in_video(state, key.index, reverse=reverse))
        return visited - 1

    spent: dict[str, float] = defaultdict(float)
    started: dict[int, float] = {}

    def timed(model: torch.nn.Module) -> None:
        model.requires_grad_(False)  # inference only (the FLOP counter's module tracker wants no autograd)
        for module in model.modules():
            name = type(module).__name__
            if name in STAGES.values():
                module.register_forward_pre_hook(lambda m, _a: started.__setitem__(id(m), time.perf_counter()))
                module.register_forward_hook(
                    lambda m, _a, _o, n=name: spent.__setitem__(n, spent[n] + time.perf_counter() - started[id(m)])
                )

    for network in networks:
        timed(network)

    def measure(run, repeat: int) -> tuple[float, dict[str, float]]:
        spent.clear()
        begin = time.perf_counter()
        for index in range(repeat):
            run(index)
        return (time.perf_counter() - begin) / repeat, {k: v / repeat for k, v in spent.items()}

    def flops(run) -> dict[str, float]:
        with FlopCounterMode(display=False) as counter:
            run(0)
        counts = counter.get_flop_counts()
        return {cls: sum(counts.get(cls, {}).values()) for cls in (*STAGES.values(), "Global")}

    embed(images[0])  # warm-up: kernel selection and allocator are not per-call costs
    click()
    propagate(volume[:4])
    embedding = measure(lambda i: embed(images[1 + i]), len(images) - 1)
    clicking = measure(lambda _i: click(), CLICKS)
    propagation_seconds, propagation_stages = measure(lambda _i: propagate(volume), 1)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "embed": embedding,
        "click": clicking,
        "propagate": (propagation_seconds / slices, {k: v / slices for k, v in propagation_stages.items()}),
        "flops_embed": flops(lambda _i: embed(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))),  # not cached
        "flops_click": flops(lambda _i: click()),
        "flops_propagate": {k: v / slices for k, v in flops(lambda _i: propagate(volume)).items()},
        "peak_mb": peak_mb,
    }


def peak_gflops(fp32_per_cycle: int | None) -> tuple[float, float, str]:
    """(float32 peak, bfloat16 peak, how they were assumed, the CPU's name first) for this CPU."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    mhz = [float(line.split(":")[1]) for line in lines if line.startswith("cpu MHz")]
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    intel = any(line.startswith("vendor_id") and "GenuineIntel" in line for line in lines)
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    fp32_per_cycle = fp32_per_cycle or (64 if intel and "avx512f" in flags else 32)
    bf16_per_cycle = 1024 if "amx_bf16" in flags else 2 * fp32_per_cycle
    cores = len(os.sched_getaffinity(0))
    ghz = (sum(mhz) / len(mhz) / 1000) if mhz else 0.0
    assumed = f"{cpu}, {cores} cores x {ghz:.2f} GHz x {fp32_per_cycle} (fp32) / {bf16_per_cycle} (bf16) FLOPs a cycle"
    return cores * ghz * fp32_per_cycle, cores * ghz * bf16_per_cycle, assumed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp32-flops-per-cycle", type=int, help="64 on Intel with AVX-512, else 32")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.checkpoint, args.slices, args.device)))
        return

    from IBISAgentLib.models.tiny_models import build_random_segmenter
    from IBISAgentLib.tools import MEDSAM2

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = build_random_segmenter(Path(folder) / "medsam2-random.pt", MEDSAM2)
        results = {}
        for config in CONFIGS:
            command = [sys.executable, __file__, "--worker", config, "--checkpoint", str(checkpoint),
                       "--slices", str(args.slices), "--device", args.device]  # fmt: skip
            output = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", check=True).stdout
            results[config] = json.loads(output.strip().splitlines()[-1])
    report(results, *peak_gflops(args.fp32_flops_per_cycle))


def report(results: dict, peak: float, bf16_peak: float, assumed: str) -> None:
    print(f"MedSAM2 (real size, random weights) at 512 px; peak assumed: {assumed} = {peak:.0f} GFLOPS "
          f"fp32, {bf16_peak:.0f} bf16\n")  # fmt: skip
    head = "| call / stage | GFLOPs | " + " | ".join(f"{c} ms | GFLOPS | % peak" for c in CONFIGS) + " |"
    print(head)
    print("|" + " --- |" * (2 + 3 * len(CONFIGS)))
    for call, title in (("embed", "image embedding"), ("click", "one click"), ("propagate", "propagation, a slice")):
        rows = [(title, None)] + [(f"  {stage}", cls) for stage, cls in STAGES.items()]
        for label, cls in rows:
            gflops = results[CONFIGS[0]][f"flops_{call}"].get(cls or "Global", 0) / 1e9
            cells = []
            for config in CONFIGS:
                total, stages = results[config][call]
                seconds = total if cls is None else stages.get(cls, 0.0)
                rate = gflops / seconds if seconds else 0.0
                share = 100 * rate / (bf16_peak if config.endswith("bf16") else peak) if peak else 0.0
                cells.append(f"{1000 * seconds:.1f} | {rate:.0f} | {share:.0f} %" if seconds else "– | – | –")
            if cls is None or any(results[c][call][1].get(cls) for c in CONFIGS):
                print(f"| {label} | {gflops:.2f} | " + " | ".join(cells) + " |")
    print("\n| peak RSS | " + " | ".join(f"{c}: {results[c]['peak_mb']:.0f} MB" for c in CONFIGS) + " |")
    ours, stock = results["ours bf16"], results["stock fp32"]
    for call in ("embed", "propagate"):
        print(f"{call}: ours bf16 is {stock[call][0] / ours[call][0]:.2f}x stock fp32")


if __name__ == "__main__":
    main()

"""``ibisagent synth``, ``eval`` and ``train``: the training and evaluation pipeline on the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..tools import CheckpointError, resolve_segmenter
from .options import (
    EXIT_OK,
    VARIANT_NAMES,
    UserError,
    add_training_tool_options,
    model_folder,
    positive_int,
    whole_number_at_least,
)

if TYPE_CHECKING:
    from ..agent.interfaces import SegmentationTool
    from ..tools.propagation import SAM2Propagator
    from ..training.manifest import Sample


def add_commands(commands: argparse._SubParsersAction) -> None:
    synth = commands.add_parser("synth", help="synthesize SFT and RL training data with the oracle clicker")
    synth.add_argument(
        "--dataset", required=True, help="manifest JSONL (image, mask, instruction|target, modality, slice)"
    )
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--teacher", help="OpenAI-compatible endpoint http(s)://HOST/v1 that writes the reasoning")
    synth.add_argument("--teacher-model", help="model name at the teacher endpoint")
    add_training_tool_options(synth)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_synth)

    evaluate = commands.add_parser("eval", help="evaluate a model or the oracle on a labelled dataset")
    evaluate.add_argument("--dataset", required=True, help="manifest JSONL")
    who = evaluate.add_mutually_exclusive_group(required=True)
    who.add_argument("--mllm", help="the model, as for segment")
    who.add_argument("--policy", choices=("oracle",), help="the oracle clicker instead of a model")
    add_training_tool_options(evaluate)
    evaluate.add_argument("--report", required=True, help="folder for results.jsonl, report.json and report.md")
    evaluate.add_argument("--max-turns", type=positive_int, default=20)
    evaluate.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="sessions run at once against an OpenAI-compatible --mllm endpoint, which batches them (default 1)",
    )
    evaluate.add_argument(
        "--propagate",
        action="store_true",
        help="also propagate each volume sample's final mask through its volume and report the 3D Dice and "
        "95%% Hausdorff distance against its 3D label",
    )
    evaluate.add_argument(
        "--check",
        action="store_true",
        help="with --propagate: also run the volume agent's check and report the 3D Dice and HD95 after it",
    )
    evaluate.add_argument(
        "--check-budget", type=positive_int, default=8, help="slices the check may re-run the agent on (default 8)"
    )
    evaluate.add_argument(
        "--search",
        action="store_true",
        help="also let the agent search each volume sample's axis for the key slice and report how often the slice "
        "it finds shows the target (the key-slice hit rate)",
    )
    evaluate.add_argument("--propagator", help="the segmenter that propagates (default: --sam2's)")
    evaluate.add_argument(
        "--propagator-variant", choices=VARIANT_NAMES, help="its variant, where the file does not tell"
    )
    evaluate.add_argument("--mllm-model")
    evaluate.add_argument("--api-key")
    evaluate.set_defaults(handler=_eval)

    train = commands.add_parser(
        "train", help="fine-tune Qwen2.5-VL: sft on synthesized turns, grpo on its own episodes"
    )
    recipes = train.add_subparsers(dest="recipe", required=True)
    grpo = recipes.add_parser("grpo", help="episode GRPO with TRL: G episodes of the agent loop per start")
    grpo.add_argument("--dataset", required=True, help="manifest JSONL: the starts (image, mask, instruction|target)")
    grpo.add_argument("--model", required=True, help="the Qwen2.5-VL to train: a folder or a Hugging Face id")
    grpo.add_argument("--out", required=True, help="folder for the adapter (or model) and episodes.jsonl")
    add_training_tool_options(grpo)
    grpo.add_argument("--group", type=whole_number_at_least(2), default=4, help="episodes per start, G (default 4)")
    grpo.add_argument("--starts-per-step", type=positive_int, default=1, help="starts per optimizer step (1)")
    grpo.add_argument("--max-turns", type=positive_int, default=8, help="turns an episode may take (8)")
    grpo.add_argument("--episode-weight", type=float, default=1.0, help="weight of the episode-return advantage")
    grpo.add_argument("--shaped-weight", type=float, default=0.5, help="weight of the per-turn shaped advantage")
    grpo.add_argument("--no-std-scaling", action="store_true", help="centre advantages only (Dr. GRPO)")
    grpo.add_argument("--lr", type=float, default=1e-6)
    grpo.add_argument("--epochs", type=float, default=1.0)
    grpo.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps")
    grpo.add_argument("--lora-rank", type=int, default=8, help="LoRA rank on the language model; 0: full fine-tuning")
    grpo.add_argument("--max-completion-length", type=positive_int, default=512)
    grpo.add_argument("--temperature", type=float, default=1.0)
    grpo.add_argument("--vllm", choices=("colocate", "server"), help="sample episodes with vLLM (TRL's modes)")
    grpo.add_argument("--seed", type=int, default=0)
    grpo.set_defaults(handler=_train_grpo)
    sft = recipes.add_parser("sft", help="LoRA SFT with TRL on the turns ibisagent synth wrote")
    sft.add_argument("--data", required=True, help="the folder ibisagent synth wrote")
    sft.add_argument("--model", required=True, help="the Qwen2.5-VL to train: a folder or a Hugging Face id")
    sft.add_argument("--out", required=True)
    sft.add_argument("--epochs", type=float, default=10.0)
    sft.add_argument("--lr", type=float, default=1e-5)
    sft.add_argument("--max-steps", type=int, default=-1)
    sft.add_argument("--lora-rank", type=positive_int, default=8)
    sft.set_defaults(handler=_train_sft)
    merge = recipes.add_parser("merge", help="fold a LoRA adapter into its base model (for grpo, segment, vLLM)")
    merge.add_argument("adapter", help="the folder train sft or train grpo wrote")
    merge.add_argument("--out", required=True, help="folder for the merged model")
    merge.add_argument("--base", help="the base model, where the adapter's recorded one is not here")
    merge.set_defaults(handler=_train_merge)


def _training_tool(kind: str, sam2: str | None, variant: str | None, device: str) -> SegmentationTool:
    """``--tool``: the random walker, or the SAM 2 family model ``--sam2`` names."""
    if kind == "classical":
        from ..tools.classical import RandomWalkerTool

        return RandomWalkerTool()
    from ..models.weights import WeightsUnavailable, sam2_spec

    try:
        return resolve_segmenter(sam2_spec(sam2), variant).tool(device)
    except (WeightsUnavailable, CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def _manifest(path: str):  # -> list[dict]
    from ..training.manifest import ManifestError, read_manifest

    try:
        return read_manifest(path)
    except ManifestError as exc:
        raise UserError(str(exc)) from exc


def _samples(path: str) -> list[Sample]:
    """Every sample of a manifest, loaded (a refusal naming the first that cannot be)."""
    from ..training.manifest import ManifestError, load_sample

    try:
        return [load_sample(record) for record in _manifest(path)]
    except ManifestError as exc:
        raise UserError(str(exc)) from exc


def _synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..training.synthesis import Teacher, synthesize

    samples = _samples(args.dataset)
    tool = _training_tool(args.tool, args.sam2, args.sam2_variant, args.device)
    teacher = Teacher(args.teacher, args.teacher_model) if args.teacher else None
    from ..tools.classical import CLASSICAL

    tool_name = "classical" if tool.spec is CLASSICAL else str(tool.spec.checkpoint)
    with tqdm(total=len(samples), desc="synthesizing", unit="sample", file=sys.stderr) as bar:
        paths = synthesize(
            samples, tool, Path(args.out), teacher, tool_name, args.seed, progress=lambda n: bar.update(1)
        )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return EXIT_OK


def _eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..training.evaluation import evaluate
    from ..training.manifest import ManifestError, load_sample
    from ..training.oracle import OraclePolicy

    records = _manifest(args.dataset)
    tool = _training_tool(args.tool, args.sam2, args.sam2_variant, args.device)
    propagator = None
    if args.propagate:
        propagator = _eval_propagator(args.propagator, args.propagator_variant, tool, args.device)
    if args.check and not args.propagate:
        raise UserError("--check applies to --propagate: it checks the propagated slices")
    if args.policy == "oracle":  # the whole labelmap where there is one: the check and the search ask on other slices
        policy_for = lambda sample: OraclePolicy(  # noqa: E731
            sample.volume_truth if sample.volume_truth is not None else sample.ground_truth
        )
    else:
        from ..models.loading import load_policy_factory
        from ..models.weights import WeightsUnavailable

        try:
            factory = load_policy_factory(args.mllm, args.device, args.mllm_model, args.api_key, args.workers)
        except (WeightsUnavailable, ValueError) as exc:
            raise UserError(str(exc)) from exc
        policy_for = lambda sample: factory()  # noqa: E731
    load = lambda record: load_sample(record, keep_volume=args.propagate or args.search)  # noqa: E731
    with tqdm(total=len(records), desc="evaluating", unit="sample", file=sys.stderr) as bar:
        try:
            report = evaluate(records, load, policy_for, tool, Path(args.report), args.max_turns,
                              progress=lambda done, total: bar.update(done - bar.n), workers=args.workers,
                              propagator=propagator, check_budget=args.check_budget if args.check else None,
                              search=args.search)  # fmt: skip
        except ManifestError as exc:
            raise UserError(str(exc)) from exc
    summary = report["summary"]
    volumes = (
        f", {summary['volumes']} volumes: 3D Dice {summary['volume_dice']:.4f}, HD95 "
        + ("undefined" if summary["hd95_mm"] is None else f"{summary['hd95_mm']:.2f} mm")
        if "volumes" in summary
        else ""
    )
    if "volume_dice_checked" in summary:
        volumes += f", after the check 3D Dice {summary['volume_dice_checked']:.4f}"
    if "key_slice_hit_rate" in summary:
        volumes += f", key-slice hit rate {summary['key_slice_hit_rate']:.2f}"
    print(
        f"{summary['samples']} samples: Dice {summary['dice']:.4f}, IoU {summary['iou']:.4f}, F1 {summary['f1']:.4f}, "
        f"NoC@85 {summary['noc85']:.2f}, NoC@90 {summary['noc90']:.2f}{volumes} -> {Path(args.report) / 'report.md'}"
    )
    return EXIT_OK


def _eval_propagator(
    propagator: str | None, variant: str | None, tool: SegmentationTool, device: str
) -> SAM2Propagator:
    """The propagator of ``--propagate``: ``--propagator``, else the click tool's own segmenter's."""
    from ..models.loading import load_propagator
    from ..models.weights import WeightsUnavailable

    if propagator:
        try:
            return load_propagator(propagator, variant).propagator(device)
        except (WeightsUnavailable, ValueError) as exc:
            raise UserError(str(exc)) from exc
    return tool.spec.propagator(device)


def _train_grpo(args: argparse.Namespace) -> int:
    import importlib.util

    from ..training.episodes import EpisodeWeights
    from ..training.grpo_trl import train

    if args.vllm and importlib.util.find_spec("vllm") is None:
        raise UserError("--vllm needs vLLM installed (pip install vllm, on a GPU machine)")
    if args.lora_rank < 0:
        raise UserError(f"--lora-rank must be 0 (full fine-tuning) or more, got {args.lora_rank}")
    model = model_folder(args.model)
    samples = _samples(args.dataset)
    weights = EpisodeWeights(args.episode_weight, args.shaped_weight, scale=not args.no_std_scaling)
    tool = _training_tool(args.tool, args.sam2, args.sam2_variant, args.device)
    out = train(samples, tool, model, Path(args.out), weights=weights,
                group_size=args.group, starts_per_step=args.starts_per_step, max_turns=args.max_turns,
                max_steps=args.max_steps, epochs=args.epochs, learning_rate=args.lr, lora_rank=args.lora_rank,
                max_completion_length=args.max_completion_length, temperature=args.temperature, vllm=args.vllm,
                seed=args.seed)  # fmt: skip
    print(
        f"{'LoRA adapter' if args.lora_rank else 'model'} written to {out}; episodes logged in {out / 'episodes.jsonl'}"
    )
    return EXIT_OK


def _train_sft(args: argparse.Namespace) -> int:
    from ..training.sft_trl import train

    if not (Path(args.data) / "sft_trl.jsonl").is_file():
        raise UserError(f"{args.data} holds no sft_trl.jsonl: give the folder ibisagent synth wrote")
    out = train(Path(args.data), model_folder(args.model), Path(args.out), args.epochs, args.lr, args.max_steps,
                args.lora_rank)  # fmt: skip
    print(f"LoRA adapter written to {out}")
    return EXIT_OK


def _train_merge(args: argparse.Namespace) -> int:
    from ..training.merge import MergeError, merge_adapter

    base = model_folder(args.base) if args.base else None
    try:
        out = merge_adapter(Path(args.adapter), Path(args.out), base)
    except MergeError as exc:
        raise UserError(str(exc)) from exc
    print(f"merged model written to {out}")
    return EXIT_OK

"""``facecloak protect PHOTOS... --out DIR``: protected full photos, before/after images and records."""

from __future__ import annotations

import argparse
from pathlib import Path

from facecloak.errors import ConfigError
from facecloak.protect.inputs import check_out_dir, check_target, expand_photos


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the protect command."""
    parser.add_argument("photos", nargs="+", type=Path, help="photos or folders of photos")
    parser.add_argument("--out", type=Path, required=True, help="output folder (also the job's resume state)")
    parser.add_argument(
        "--method",
        metavar="METHOD",
        help="clip2protect: adversarial makeup (default); map: an identity change carried by a facial expression; "
        "warp: a slight landmark-driven change of shape (and make-up), no generative model needed",
    )
    parser.add_argument("--prompt", help="makeup text prompt for the CLIP loss, e.g. 'red lipstick'")
    parser.add_argument(
        "--expression", help="map or warp: the expression that carries the change, e.g. happy (a slight smile)"
    )
    parser.add_argument("--target", type=Path, help="impersonate the person in this photo (default: dodging)")
    parser.add_argument("--preset", help="configuration preset (configs/preset/NAME.yaml), e.g. offline or paper")
    parser.add_argument("--restart", action="store_true", help="discard a previous job in --out")


PAPER_FR_MODELS = ("ir152", "irse50", "mobile_face", "facenet")
SCORE_NETWORK = "ddpm_celebahq_256"


def default_preset(method: str) -> str:
    """Our full-photo CLIP2Protect preset when the paper's weights are present, else the offline one (on the console).

    MAP without the CelebA-HQ score network runs ``warp_offline`` (see :func:`offline_method`); with it, the method's
    full-size defaults on top of the preset the FR weights allow. The landmark warp needs no generative weights.
    """
    from facecloak.registry.store import is_available

    if method == "warp" or (method == "map" and not is_available(SCORE_NETWORK)):
        print("preset: warp_offline")
        return "warp_offline"
    needed = PAPER_FR_MODELS if method == "map" else ("stylegan2_ffhq_1024", *PAPER_FR_MODELS)
    # clip2protect_photo: the paper's networks with our photo changes (preset=paper reproduces the paper's code).
    preset = "clip2protect_photo" if all(is_available(m) for m in needed) else "offline"
    print(f"preset: {preset}" + ("" if preset != "offline" else " (the paper's weights are not all present)"))
    return preset


def offline_method(method: str, preset: str | None) -> str:
    """MAP without its score network carries the change on the explicit expression warp instead (said on the console).

    An untrained score network fine-tuned for a few steps paints saturated colour blotches over the face; the
    landmark warp with an expression term is MAP's idea (identity change carried by an expression) with an explicit
    expression model in place of the diffusion prior. ``--preset map_offline`` still runs the untrained network.
    """
    from facecloak.registry.store import is_available

    if method != "map" or preset is not None or is_available(SCORE_NETWORK):
        return method
    print(
        f"method: warp with an expression ({SCORE_NETWORK} is not present; an untrained score network paints colour "
        "blotches, so the change is carried by a landmark warp toward the expression instead)"
    )
    return "warp"


EXPRESSION_KEYS = {"map": "map.expression", "warp": "warp.expression"}
DEFAULT_WARP_EXPRESSION = "happy"
"""The expression `--method map` asks of the warp offline when none is given (MAP's default)."""


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    """Check the inputs, build the configuration from preset, options and overrides, run the job, say how it went."""
    from facecloak.config.compose import compose
    from facecloak.protect.runner import run_protect_job
    from facecloak.protect.verdict_table import format_verdict_table

    photos = expand_photos(args.photos)
    check_out_dir(args.out)
    method = offline_method(args.method, args.preset) if args.method else None
    extra = [f"preset={args.preset or default_preset(args.method or 'clip2protect')}"]
    if method:
        extra.append(f"protect.method={method}")
    expression = args.expression or (DEFAULT_WARP_EXPRESSION if method != args.method else None)
    if args.prompt:
        extra.append(f"search.makeup_prompt={args.prompt}")
    if args.target:
        extra += ["protect.mode=impersonate", f"protect.target={args.target}"]
    config = compose(extra + overrides)
    method = config.protect.method
    if expression:
        if method not in EXPRESSION_KEYS:
            raise ConfigError(
                f"--expression is an option of --method map or warp; protect.method is '{method}' (add --method map)"
            )
        config = compose([*extra, f"{EXPRESSION_KEYS[method]}={expression}", *overrides])
    if args.prompt and method != "clip2protect":
        raise ConfigError(f"--prompt is the makeup text of clip2protect; protect.method is '{method}' (drop --prompt)")
    check_target(config)
    summary = run_protect_job(photos, args.out, config, restart=args.restart)
    print(format_verdict_table(summary["verdicts"]))
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary["counts"].items()))
    print(f"{len(summary['photos'])} photo(s): {counts}; outputs in {args.out}")
    for image_id, error in summary["failed"].items():
        print(f"failed: {summary['photos'][image_id]}: {error}")
    if not summary["all_photos_processed"]:
        print(f"incomplete: {len(summary['incomplete'])} photo(s) unfinished; rerun the same command to resume")
        return 2
    return 0 if summary["counts"].get("done", 0) else 1


COMMAND = (add_arguments, run)

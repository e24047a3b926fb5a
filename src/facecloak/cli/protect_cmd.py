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
        help="clip2protect: adversarial makeup (default); map: an identity change carried by a facial expression",
    )
    parser.add_argument("--prompt", help="makeup text prompt for the CLIP loss, e.g. 'red lipstick'")
    parser.add_argument("--expression", help="MAP: the expression that carries the change, e.g. happy or surprised")
    parser.add_argument("--target", type=Path, help="impersonate the person in this photo (default: dodging)")
    parser.add_argument("--preset", help="configuration preset (configs/preset/NAME.yaml), e.g. offline or paper")
    parser.add_argument("--restart", action="store_true", help="discard a previous job in --out")


PAPER_FR_MODELS = ("ir152", "irse50", "mobile_face", "facenet")
SCORE_NETWORK = "ddpm_celebahq_256"


def default_preset(method: str) -> str:
    """Our full-photo CLIP2Protect preset when the paper's weights are present, else the offline one (on the console).

    MAP without the CelebA-HQ score network runs ``map_offline``; with it, the method's full-size defaults on top of
    the preset the FR weights allow.
    """
    from facecloak.registry.store import is_available

    if method == "map" and not is_available(SCORE_NETWORK):
        print(f"preset: map_offline ({SCORE_NETWORK} is not present)")
        return "map_offline"
    needed = PAPER_FR_MODELS if method == "map" else ("stylegan2_ffhq_1024", *PAPER_FR_MODELS)
    # clip2protect_photo: the paper's networks with our photo changes (preset=paper reproduces the paper's code).
    preset = "clip2protect_photo" if all(is_available(m) for m in needed) else "offline"
    print(f"preset: {preset}" + ("" if preset != "offline" else " (the paper's weights are not all present)"))
    return preset


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    """Check the inputs, build the configuration from preset, options and overrides, run the job, say how it went."""
    from facecloak.config.compose import compose
    from facecloak.protect.runner import run_protect_job
    from facecloak.protect.verdict_table import format_verdict_table

    photos = expand_photos(args.photos)
    check_out_dir(args.out)
    extra = [f"preset={args.preset or default_preset(args.method or 'clip2protect')}"]
    if args.method:
        extra.append(f"protect.method={args.method}")
    if args.prompt:
        extra.append(f"search.makeup_prompt={args.prompt}")
    if args.expression:
        extra.append(f"map.expression={args.expression}")
    if args.target:
        extra += ["protect.mode=impersonate", f"protect.target={args.target}"]
    config = compose(extra + overrides)
    method = config.protect.method
    if args.expression and method != "map":
        raise ConfigError(f"--expression is a MAP option; protect.method is '{method}' (add --method map)")
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

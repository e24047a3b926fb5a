"""The ``facecloak`` command line: one entry point, one sub-command per job.

Arguments of the form ``key=value`` anywhere after the sub-command are configuration overrides
(``group=option`` swaps a config group file, ``dotted.key=value`` sets a value).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from facecloak.errors import FacecloakError

log = logging.getLogger("facecloak")

# Sub-command modules register themselves here: name -> (add_arguments, run).
Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, list[str]], int]]


def _commands() -> dict[str, tuple[str, Command]]:
    from facecloak.cli import evaluate_cmd, faces_cmd, fr_cmd, protect_cmd, stage_cmd, sweep_cmd, weights_cmd

    return {
        "protect": ("protect the faces in full photos from face recognition", protect_cmd.COMMAND),
        "invert": ("put faces into the generator's W+ space (e4e or optimisation)", stage_cmd.INVERT),
        "tune": ("invert and pivot-tune the generator per face (CLIP2Protect stage 1)", stage_cmd.TUNE),
        "weights": ("list, fetch, verify and locate pretrained models", weights_cmd.COMMAND),
        "align": ("detect every face in photos and write aligned crops", faces_cmd.ALIGN),
        "embed": ("embed the faces in photos with face-recognition models", faces_cmd.EMBED),
        "fr": ("face-recognition tools: calibrate thresholds on a labelled photo set", fr_cmd.COMMAND),
        "evaluate": ("compare protection methods: PSR per FR model and FAR, robustness, quality", evaluate_cmd.COMMAND),
        "sweep": ("run a hyper-parameter sweep of protection trials and rank them by a metric", sweep_cmd.COMMAND),
    }


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` overrides from ordinary arguments (options' own ``--x=y`` stay put)."""
    plain: list[str] = []
    overrides: list[str] = []
    for arg in argv:
        (overrides if "=" in arg and not arg.startswith("-") else plain).append(arg)
    return plain, overrides


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (sub-commands add their own options)."""
    parser = argparse.ArgumentParser(
        prog="facecloak",
        description="Protect face photos from face recognition while keeping them natural.",
        epilog="Configuration overrides: add key=value (e.g. faces.min_face_size=40 fr=paper).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, (add_arguments, run)) in _commands().items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command_parser)
        command_parser.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a sub-command; expected failures print one clear line and exit 2, never a traceback."""
    plain, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(plain)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.run(args, overrides))
    except FacecloakError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

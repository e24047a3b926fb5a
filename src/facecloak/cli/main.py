"""The ``facecloak`` command line: one entry point, one sub-command per job.

Arguments of the form ``key=value`` anywhere after the sub-command are configuration overrides
(``group=option`` swaps a config group file, ``dotted.key=value`` sets a value).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from facecloak.errors import FacecloakError

# Sub-command modules register themselves here: name -> (add_arguments, run).
Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, list[str]], int]]

# name -> (help, "module:ATTRIBUTE"). A command's module is imported only when that command runs (or shows its own
# help): most pull in torch and Lightning, and `facecloak --help` must answer at once.
COMMANDS: dict[str, tuple[str, str]] = {
    "protect": ("protect the faces in full photos from face recognition", "protect_cmd:COMMAND"),
    "invert": ("put faces into the generator's W+ space (e4e or optimisation)", "stage_cmd:INVERT"),
    "tune": ("invert and pivot-tune the generator per face (CLIP2Protect stage 1)", "stage_cmd:TUNE"),
    "weights": ("list, fetch, verify and locate pretrained models", "weights_cmd:COMMAND"),
    "align": ("detect every face in photos and write aligned crops", "faces_cmd:ALIGN"),
    "embed": ("embed the faces in photos with face-recognition models", "faces_cmd:EMBED"),
    "fr": ("face-recognition tools: calibrate thresholds on a labelled photo set", "fr_cmd:COMMAND"),
    "evaluate": ("compare protection methods: PSR per FR model and FAR, robustness, quality", "evaluate_cmd:COMMAND"),
    "sweep": ("run a hyper-parameter sweep of protection trials and rank them by a metric", "sweep_cmd:COMMAND"),
}


def load_command(name: str) -> Command:
    """Import one sub-command's module and return its (add_arguments, run) pair."""
    module, attribute = COMMANDS[name][1].split(":")
    command: Command = getattr(importlib.import_module(f"facecloak.cli.{module}"), attribute)
    return command


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` overrides from ordinary arguments (options' own ``--x=y`` stay put)."""
    plain: list[str] = []
    overrides: list[str] = []
    for arg in argv:
        (overrides if "=" in arg and not arg.startswith("-") else plain).append(arg)
    return plain, overrides


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; sub-command options are added for ``only`` (all of them when None)."""
    parser = argparse.ArgumentParser(
        prog="facecloak",
        description="Protect face photos from face recognition while keeping them natural.",
        epilog="Configuration overrides: add key=value (e.g. faces.min_face_size=40 fr=paper).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show every library's logs and warnings too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            add_arguments, run = load_command(name)
            add_arguments(command_parser)
            command_parser.set_defaults(run=run)
    return parser


def _chosen_command(plain: Sequence[str]) -> str:
    """The sub-command named on the command line (the first word that is one), or '' for none."""
    return next((arg for arg in plain if not arg.startswith("-")), "") if plain else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run a sub-command; expected failures print one clear line and exit 2, never a traceback."""
    from facecloak.runtime.console import configure_console

    plain, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    chosen = _chosen_command(plain)
    args = build_parser(only=chosen if chosen in COMMANDS else "").parse_args(plain)
    configure_console(verbose=args.verbose)
    try:
        return int(args.run(args, overrides))
    except FacecloakError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {_interrupted_hint(args)}", file=sys.stderr)
        return 130
    except SystemExit as exit_:
        # Lightning turns a Ctrl-C inside a stage into SystemExit(1) raised while handling the KeyboardInterrupt.
        if isinstance(exit_.__context__, KeyboardInterrupt):
            print(f"interrupted: {_interrupted_hint(args)}", file=sys.stderr)
            return 130
        raise


def _interrupted_hint(args: argparse.Namespace) -> str:
    """What a Ctrl-C kept and how to go on (a job's finished photos and stage checkpoints survive it)."""
    out = getattr(args, "out", None)
    if args.command == "protect" and out is not None:
        return (
            f"finished photos and stage checkpoints are kept in {out}; rerun the same command to resume "
            "(the photo in progress restarts from its last finished stage)"
        )
    return "nothing half-written is kept; rerun the same command to go on"


if __name__ == "__main__":
    sys.exit(main())

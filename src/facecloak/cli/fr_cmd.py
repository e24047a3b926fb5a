"""``facecloak fr calibrate --faces DIR [--models ...] --out FILE.json``."""

from __future__ import annotations

import argparse
from pathlib import Path

from facecloak.config.compose import compose
from facecloak.models.fr.zoo import fr_model_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the fr command."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    cal = sub.add_parser("calibrate", help="ROC-AUC, thresholds at FAR and rank-1 on a labelled photo folder")
    cal.add_argument("--faces", type=Path, required=True, help="folder with labels.csv (identity,path)")
    cal.add_argument("--models", nargs="+", help="default: every face-recognition model whose weights are present")
    cal.add_argument("--out", type=Path, required=True, help="JSON report (a .md table is written next to it)")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    """Calibrate the chosen models and write the report."""
    from facecloak.verify.calibrate import calibrate, markdown_table, write_report

    config = compose(overrides)
    models = args.models or fr_model_names(available_only=True)
    report = calibrate(args.faces, models, config.faces, config.fr.far_levels, config.device)
    json_path, md_path = write_report(report, args.out)
    print(markdown_table(report), end="")
    print(f"wrote {json_path} and {md_path}")
    return 0


COMMAND = (add_arguments, run)

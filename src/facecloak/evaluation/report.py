"""Files of an evaluation run: ``report.json``, ``report.md`` (the papers' table layout), two figures.

Why a separate module: the harness produces plain data once; how it is shown (markdown tables shaped like the
AMT-GAN / CLIP2Protect tables, a PSR-vs-threshold curve, a before/after grid) can change without re-running it.
Everything here reads only the report dict and the PNGs the harness wrote.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facecloak.attacks.pixel import scaled_box
from facecloak.evaluation.harness import NO_TRANSFORM, ORIGINAL_DIR, photo_path
from facecloak.io.images import load_photo, save_png

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PSR_PLOT = "psr_vs_threshold.png"
GRID = "grid.png"
ROBUSTNESS_FAR = "0.01"
"""FAR of the robustness table: the middle level of the papers' three (0.1 / 0.01 / 0.001)."""
MAIN_TASK = "dodging_gallery"
GRID_CELL = 128
"""Side in pixels of one face crop in the grid."""
GRID_FACE_SCALE = 1.3
"""The grid shows the face box enlarged this much, so hair line and chin (where changes often show) are in view."""
PLOT_POINTS = 200
PLOT_MARGIN = 0.05
"""Similarity margin around the plotted range of thresholds."""
MISSING = "–"


def held_out_model(report: dict[str, Any]) -> str:
    """The model the robustness table and the plot are about: the first held-out one (else the last judged)."""
    models = report["models"]
    return models["held_out"][0] if models["held_out"] else models["attacked"][-1]


def _percent(cell: dict[str, Any] | None) -> str:
    if not cell or not cell.get("available") or cell.get("total", 0) == 0:
        return MISSING
    return f"{100 * cell['rate']:.1f}"


def _number(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.{digits}f}"
    return "n/a"


def psr_table(report: dict[str, Any], task: str = MAIN_TASK, variant: str = NO_TRANSFORM) -> str:
    """Rows = methods, columns = model × FAR (held-out models marked), PSR in percent."""
    held = set(report["models"]["held_out"])
    models = [*report["models"]["attacked"], *report["models"]["held_out"]]
    fars = report["far_levels"]
    header = ["method"] + [f"{m}{' (held out)' if m in held else ''} @FAR {f}" for m in models for f in fars]
    lines = [_row(header), _row(["---"] * len(header))]
    for method, result in report["methods"].items():
        rates = result["psr"].get(variant, {}).get(task, {})
        lines.append(_row([method] + [_percent(rates.get(m, {}).get(f)) for m in models for f in fars]))
    return "\n".join(lines)


def robustness_table(report: dict[str, Any], far: str = ROBUSTNESS_FAR) -> str:
    """Rows = methods, columns = robustness transforms: gallery-dodging PSR of the held-out model at one FAR."""
    model = held_out_model(report)
    variants = [NO_TRANSFORM, *report["settings"]["transforms"]]
    lines = [_row(["method", *variants]), _row(["---"] * (len(variants) + 1))]
    for method, result in report["methods"].items():
        cells = [_percent(result["psr"].get(v, {}).get(MAIN_TASK, {}).get(model, {}).get(far)) for v in variants]
        lines.append(_row([method, *cells]))
    return "\n".join(lines)


QUALITY_COLUMNS = {
    "psnr": ("PSNR", 2),
    "ssim": ("SSIM", 4),
    "ms_ssim": ("MS-SSIM", 4),
    "haarpsi": ("HaarPSI", 4),
    "gmsd": ("GMSD ↓", 4),
    "lpips": ("LPIPS ↓", 4),
}
"""Per-photo metrics in the quality table, their labels (↓: lower is better) and digits."""
SET_QUALITY_COLUMNS = {"fid": ("FID", 4), "kid": ("KID", 4)}
"""Set-level metrics (one value per method and region), labels and digits."""


def quality_table(report: dict[str, Any]) -> str:
    """Mean face-box and whole-photo quality per method, one column per metric; then why any is n/a."""
    return _region_metric_table(report, QUALITY_COLUMNS)


def set_quality_table(report: dict[str, Any]) -> str:
    """FID / KID of each method's photos against the originals, face box and whole photo; then why any is n/a."""
    return _region_metric_table(report, SET_QUALITY_COLUMNS)


def _region_metric_table(report: dict[str, Any], labels: dict[str, tuple[str, int]]) -> str:
    """Rows = methods, columns = region × the metrics of ``labels`` the report has; notes say why a cell is n/a."""
    present = {m for r in report["methods"].values() for region in r["quality"].values() for m in region}
    columns = [(region, metric) for region in ("face", "photo") for metric in labels if metric in present]
    lines = [_row(["method"] + [f"{region} {labels[metric][0]}" for region, metric in columns])]
    lines.append(_row(["---"] * (len(columns) + 1)))
    reasons: set[str] = set()
    for method, result in report["methods"].items():
        values = [result["quality"].get(region, {}).get(metric) for region, metric in columns]
        reasons |= {v["unavailable"] for v in values if isinstance(v, dict)}
        lines.append(_row([method] + [_number(v, labels[m][1]) for v, (_, m) in zip(values, columns)]))
    notes = [f"n/a: {reason}" for reason in sorted(reasons)]
    return "\n\n".join(["\n".join(lines), *notes])  # a blank line first, or markdown reads a note as a table row


def identification_table(report: dict[str, Any], variant: str = NO_TRANSFORM) -> str:
    """Rows = methods, columns = model × rank: share of protected photos whose person the gallery search finds."""
    held = set(report["models"]["held_out"])
    models = [*report["models"]["attacked"], *report["models"]["held_out"]]
    ranks = report["identification_ranks"]
    header = ["method"] + [f"{m}{' (held out)' if m in held else ''} rank-{k}" for m in models for k in ranks]
    lines = [_row(header), _row(["---"] * len(header))]
    for method, result in report["methods"].items():
        cells = result["identification"].get(variant, {})
        lines.append(_row([method] + [_rank_rate(cells.get(m), k) for m in models for k in ranks]))
    return "\n".join(lines)


def _rank_rate(cell: dict[str, Any] | None, k: int) -> str:
    if not cell or not cell.get("n"):
        return MISSING
    return f"{100 * cell[f'rank{k}']:.1f}"


def cost_table(report: dict[str, Any]) -> str:
    """Per method and stage: seconds and peak memory per photo, photos judged and failures."""
    header = ["method", "stage", "s / photo", "peak MB (max)", "stage MB (mean)", "stage MB (max)", "photos", "failed"]
    lines = [_row(header), _row(["---"] * len(header))]
    for method, result in report["methods"].items():
        counts = [str(result["n"]), str(len(result["failures"]))]
        stages = result["cost"] or {MISSING: None}
        for stage, cost in stages.items():
            if cost is None:
                lines.append(_row([method, stage, MISSING, MISSING, MISSING, MISSING, *counts]))
                continue
            memory = [cost["peak_mb_max"], cost["peak_increase_mb_mean"], cost["peak_increase_mb_max"]]
            lines.append(
                _row([method, stage, _number(cost["seconds_per_image"], 2), *[_number(m, 0) for m in memory], *counts])
            )
    return "\n".join(lines)


def thresholds_table(report: dict[str, Any]) -> str:
    """Every threshold used, with its source (published or calibrated)."""
    lines = [_row(["model", "FAR", "threshold", "metric", "source"]), _row(["---"] * 5)]
    for model, levels in report["thresholds"].items():
        for far, threshold in sorted(levels.items(), key=lambda kv: -float(kv[0])):
            metric = threshold.get("metric", "cosine")
            lines.append(_row([model, far, f"{threshold['value']:.4f}", metric, threshold["source"]]))
    return "\n".join(lines)


def verdicts_table(report: dict[str, Any]) -> str:
    """Per method: photos protected from every model, still recognised by one, or whose face was not found again."""
    lines = [_row(["method", "protected", "still recognised", "no face found"]), _row(["---"] * 4)]
    for method, result in report["methods"].items():
        counts = result.get("verdicts", {})
        lines.append(_row([method, *(str(counts.get(k, 0)) for k in ("protected", "recognised", "no_face_found"))]))
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def shown_path(path: str) -> str:
    """A path as a report shows it: relative to the shared root or the checkout, never a machine's absolute path."""
    from facecloak.paths import shared_root, source_checkout

    resolved = Path(path).expanduser().resolve()
    for root, label in ((shared_root(), "$FACECLOAK_SHARED"), (source_checkout(), ".")):
        if root is not None and (resolved == root or root in resolved.parents):
            return str(Path(label) / resolved.relative_to(root))
    return resolved.name


def markdown_report(report: dict[str, Any]) -> str:
    """The whole ``report.md``: settings, PSR tables, robustness, identification, quality, cost, thresholds."""
    settings = report["settings"]
    misses = {
        method: sum(any(p.get("redetect_miss", {}).values()) for p in result["photos"])
        for method, result in report["methods"].items()
    }
    smoke = [f"**{report['not_results']}**"] if "not_results" in report else []
    return "\n\n".join(
        [
            "# facecloak evaluate",
            *smoke,
            f"Dodging on {len(report['probes'])} probes from `{shown_path(settings['faces_dir'])}` (gallery: "
            f"{report['gallery']['n']} photos); pixel baselines at eps {settings['eps_255']:g}/255, "
            f"{settings['steps']} steps, attacking {', '.join(report['models']['attacked'])}. "
            "PSR in percent; a face is protected when its similarity is at or below the model's threshold (for a "
            "model compared by distance, dlib's, when its distance is at or above it).",
            "## PSR vs the gallery (no other photo of the same person matches)",
            psr_table(report, "dodging_gallery"),
            "## PSR vs the photo's own original",
            psr_table(report, "dodging_original"),
            f"## Verdicts per photo (protect's rule: against the photo's original at FAR {report.get('verdict_far')})",
            verdicts_table(report),
            f"## Robustness: gallery PSR of {held_out_model(report)} at FAR {ROBUSTNESS_FAR} after each transform",
            robustness_table(report),
            "## Identification (percent of protected photos whose person is ranked within the first k)",
            f"Gallery: the person's other photos plus every other person's as distractors ({report['gallery']['n']} "
            "clean photos, each protected photo's own original left out); lower means better protection.",
            identification_table(report),
            "## Quality (mean over probes; PSNR of identical photos is ∞; ↓: lower is better)",
            "MS-SSIM drops its coarsest scales on face boxes too small for all five.",
            quality_table(report),
            "## Set-level quality (FID / KID of each method's photos against the originals; 0 = same distribution)",
            set_quality_table(report),
            "## Cost per photo",
            f"Memory: {report['cost_memory']}. Peak MB is the absolute peak (models included); stage MB is the "
            "stage's own working memory above what was in use when it started.",
            cost_table(report),
            "## Thresholds",
            thresholds_table(report),
            "Re-detection misses (PSR measures them at the original box; their per-photo verdict is 'no face "
            "found', never protected): " + ", ".join(f"{method} {count}" for method, count in misses.items()),
        ]
    )


def plot_psr_vs_threshold(report: dict[str, Any], path: Path) -> Path:
    """PSR of each method against the held-out model's threshold, FAR thresholds marked: how much margin there is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = held_out_model(report)
    series = {
        method: np.array(
            [
                s
                for p in result["photos"]
                if (s := p.get("similarity", {}).get(NO_TRANSFORM, {}).get(MAIN_TASK, {}).get(model)) is not None
            ]
        )
        for method, result in report["methods"].items()
    }
    marks = {far: t["value"] for far, t in report["thresholds"].get(model, {}).items()}
    distance = report.get("metrics", {}).get(model) == "euclidean"
    values = [v for s in series.values() for v in s] + list(marks.values())
    low, high = (min(values) - PLOT_MARGIN, max(values) + PLOT_MARGIN) if values else (0.0, 1.0)
    grid = np.linspace(low, high, PLOT_POINTS)
    figure, axes = plt.subplots(figsize=(6, 4))
    for method, sims in series.items():
        if len(sims):
            axes.plot(grid, [((sims >= t) if distance else (sims <= t)).mean() for t in grid], label=method)
    for far, threshold in marks.items():
        axes.axvline(threshold, linestyle="--", color="grey", linewidth=0.8)
        axes.text(threshold, 1.02, f"FAR {far}", rotation=90, fontsize=7, va="bottom", ha="center")
    axes.set_xlabel(f"{model} threshold ({'Euclidean distance' if distance else 'cosine similarity'})")
    axes.set_ylabel("PSR vs gallery")
    axes.set_ylim(-0.02, 1.15)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def before_after_grid(report: dict[str, Any], out_dir: Path) -> np.ndarray:
    """One row per probe, one column for the original and one per method: the face crops side by side."""
    columns = [ORIGINAL_DIR, *report["methods"]]
    rows = []
    for probe in report["methods"][next(iter(report["methods"]))]["photos"]:
        cells: list[np.ndarray] = []
        for folder in columns:
            path = photo_path(out_dir, folder, probe["image_id"])
            if not path.is_file():
                cells.append(np.zeros((GRID_CELL, GRID_CELL, 3), np.uint8))  # the method failed on this photo
                continue
            rgb = load_photo(path, max_side=None).rgb
            x0, y0, x1, y1 = scaled_box(probe["box"], GRID_FACE_SCALE, rgb.shape[:2])
            cells.append(cv2.resize(rgb[y0:y1, x0:x1], (GRID_CELL, GRID_CELL), interpolation=cv2.INTER_AREA))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md, psr_vs_threshold.png and grid.png into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in (REPORT_JSON, REPORT_MD, PSR_PLOT, GRID)}
    paths[REPORT_JSON].write_text(json.dumps(report, indent=2))
    paths[REPORT_MD].write_text(markdown_report(report) + "\n")
    plot_psr_vs_threshold(report, paths[PSR_PLOT])
    save_png(paths[GRID], before_after_grid(report, out_dir))
    return paths


def summary_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat scalars (``psr/<variant>/<task>/<method>/<model>/far<f>``, identification, quality, cost) for trackers."""
    flat: dict[str, float] = {}
    for method, result in report["methods"].items():
        for variant, tasks in result["psr"].items():
            for task, models in tasks.items():
                for model, levels in models.items():
                    for far, cell in levels.items():
                        if cell.get("available") and cell.get("total"):
                            flat[f"psr/{variant}/{task}/{method}/{model}/far{far}"] = float(cell["rate"])
        for region, metrics in result["quality"].items():
            for metric, value in metrics.items():
                if isinstance(value, float) and math.isfinite(value):
                    flat[f"quality/{region}/{metric}/{method}"] = value
        for variant, models in result["identification"].items():
            for model, cell in models.items():
                for k in report["identification_ranks"]:
                    if cell["n"]:
                        flat[f"identification/{variant}/{method}/{model}/rank{k}"] = float(cell[f"rank{k}"])
        flat[f"cost/seconds_per_photo/{method}"] = float(result["seconds_per_photo"])
        for stage, cost in result["cost"].items():
            flat[f"cost/{stage}/seconds_per_image/{method}"] = float(cost["seconds_per_image"])
            if cost["peak_increase_mb_max"] is not None:
                flat[f"cost/{stage}/peak_increase_mb_max/{method}"] = float(cost["peak_increase_mb_max"])
    return flat

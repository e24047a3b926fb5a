"""The end of every protect job: whether each photo is protected, per face and FR model, in words and in counts.

Read from the per-photo records the judge wrote (:mod:`facecloak.verify.judge`), so the console, ``summary.json``
and the sweep show the same verdicts. A ``scale=smoke`` run is flagged as not results wherever its verdicts appear.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from facecloak.verify.judge import OUTCOME_WORDS, OUTCOMES, count_outcomes, face_outcome

ROLE_WORDS = {"attacked": "attacked", "held_out": "held out"}
NOT_RESULTS = "scale=smoke run: these verdicts check the code path at a tiny size; they are NOT results"


def verdict_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per photo, face and FR model (attacked first, then held out), as the records hold them."""
    rows = []
    for record in records:
        for face in record["faces"]:
            for model, verdict in face.get("fr", {}).items():
                rows.append(
                    {
                        "photo": record["source"],
                        "image_id": record["image_id"],
                        "face": face["face"],
                        "model": model,
                        "role": verdict["role"],
                        "metric": verdict["metric"],
                        "before": verdict["before"],
                        "after": verdict["after"],
                        "threshold": verdict["threshold"],
                        "margin": verdict["margin"],
                        "verdict": verdict["verdict"],
                    }
                )
    return rows


def verdict_summary(records: Sequence[Mapping[str, Any]], smoke: bool) -> dict[str, Any]:
    """Counts per model and per face (a face is protected only when every model says so), plus every row."""
    rows = verdict_rows(records)
    by_model: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = by_model.setdefault(row["model"], {"role": row["role"], "outcomes": []})
        entry["outcomes"].append(row["verdict"])
    faces = [face_outcome(face["fr"].values()) for record in records for face in record["faces"] if face.get("fr")]
    summary: dict[str, Any] = {
        "faces": count_outcomes(faces),
        "by_model": {m: {"role": e["role"], **count_outcomes(e["outcomes"])} for m, e in by_model.items()},
        "rows": rows,
    }
    if smoke:
        summary["not_results"] = NOT_RESULTS
    return summary


def _value(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def format_verdict_table(summary: Mapping[str, Any]) -> str:
    """The console table: photo, face, model (role), before → after, threshold, verdict in words, then counts."""
    header = ("photo", "face", "model", "before → after", "threshold", "verdict")
    lines = []
    for row in summary["rows"]:
        unit = "dist" if row["metric"] == "euclidean" else "cos"
        lines.append(
            (
                str(row["photo"]).rsplit("/", 1)[-1],
                str(row["face"]),
                f"{row['model']} ({ROLE_WORDS.get(row['role'], row['role'])})",
                f"{unit} {_value(row['before'])} → {_value(row['after'])}",
                _value(row["threshold"]),
                OUTCOME_WORDS[row["verdict"]],
            )
        )
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in (header, *lines)]
    faces = summary["faces"]
    text.append(
        f"faces: {sum(faces.values())}; "
        + ", ".join(f"{faces[o]} {OUTCOME_WORDS[o]}" for o in OUTCOMES)
        + " (protected = every model fooled)"
    )
    if "not_results" in summary:
        text.insert(0, f"!! {summary['not_results']}")
        text.append(f"!! {summary['not_results']}")
    return "\n".join(text)

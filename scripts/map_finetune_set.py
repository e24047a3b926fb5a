"""MAP on a set of photos: fine-tune ONE score network on all of them, data-parallel (DDP) across devices.

Per-image protection gives each photo its own network; photos that share a target can share one fine-tuned network
instead, and then the work is ordinary data parallelism: each rank takes its share of the photos, gradients are
averaged across ranks before MAP's gradient projection (``ScoreFinetune._average_over_ranks``), every rank ends with
the same weights, and rank 0 saves the network (``DDPMUNet.from_pretrained`` loads it to protect new photos).

    torchrun --nproc_per_node 2 scripts/map_finetune_set.py PHOTOS... --out ft/ --devices 2 --accelerator cpu

``--unet DIR`` starts from a saved network (e.g. the CelebA-HQ DDPM converted by ``facecloak weights``); without it
a seeded untrained network of ``--resolution`` is used (no face prior: a check of the mechanics, not of quality).
Each rank writes ``weights_rank<R>.sha256`` so a run can prove the replicas stayed identical.

Each rank detects, crops and DDIM-inverts only its own share of the photos (round-robin by rank), on its own
device (``cuda:LOCAL_RANK`` when a GPU is used), and then trains on that share, cycling through it for ``--steps``
steps: the expensive preparation is split over the ranks instead of repeated by each of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from facecloak.diffusion import NoiseSchedule
from facecloak.faces.detect import build_detector
from facecloak.faces.regions import square_face_crop
from facecloak.io.images import load_photo
from facecloak.losses.expression import ExpressionObjective
from facecloak.losses.identity import AdversarialIdentityLoss
from facecloak.models.ddpm import DDPMConfig, DDPMUNet
from facecloak.models.faceapi import load_faceapi_model
from facecloak.models.fr.zoo import load_fr_model
from facecloak.runtime.devices import resolve_device
from facecloak.runtime.distributed import detect_ranks
from facecloak.stages.score_finetune import ScoreFinetune, save_finetuned
from facecloak.stages.score_finetune_config import ScoreFinetuneConfig
from facecloak.stages.score_finetune_data import prepare_finetune_faces

MAX_PHOTO_SIDE = 640


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer, in order (equal digests = identical replicas)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--unet", type=Path, help="a saved DDPMUNet folder; default: untrained of --resolution")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--expression", default="happy")
    parser.add_argument("--attacked", nargs="+", default=["mobilefacenet_casia"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--t0", type=int, default=200)
    parser.add_argument("--inversion-steps", type=int, default=4)
    parser.add_argument("--generation-steps", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default="1")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    L.seed_everything(args.seed, verbose=False)

    ranks = detect_ranks()
    mine = ranks.share(args.photos)
    if not mine:
        raise SystemExit(f"{len(args.photos)} photo(s) for {ranks.world_size} ranks: give at least one per rank")
    device = resolve_device("cpu" if args.accelerator == "cpu" else "auto", ranks.local_rank)
    torch.manual_seed(args.seed)  # the untrained network must be the same on every rank
    unet = DDPMUNet.from_pretrained(args.unet) if args.unet else DDPMUNet(_tiny_config(args.resolution))
    unet = unet.to(device)
    size = unet.config.resolution
    detector = build_detector("mtcnn", device=str(device))
    images, landmarks = [], []
    for path in mine:
        rgb = load_photo(path, max_side=MAX_PHOTO_SIDE).rgb
        faces = detector.detect(rgb)
        if not faces:
            raise SystemExit(f"no face detected in {path}; remove it from the set")
        crop = square_face_crop(rgb, faces[0], size)
        images.append(crop.image01)
        landmarks.append(crop.landmarks5)

    config = ScoreFinetuneConfig(
        expression=args.expression,
        t0=args.t0,
        inversion_steps=args.inversion_steps,
        generation_steps=args.generation_steps,
        lr=args.lr,
        seed=args.seed,
    )
    identity = AdversarialIdentityLoss([load_fr_model(n, device) for n in args.attacked], mode="dodge").to(device)
    landmark_net = load_faceapi_model("landmark68").to(device)
    schedule = NoiseSchedule()
    images_t, landmarks_t = torch.stack(images).to(device), torch.stack(landmarks).to(device)
    data = prepare_finetune_faces(unet, images_t, landmarks_t, config, identity, landmark_net)
    module = ScoreFinetune(unet, config, identity, ExpressionObjective(args.expression), landmark_net, schedule)
    devices: int | str = int(args.devices) if args.devices.isdigit() else args.devices
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=devices,
        num_nodes=args.num_nodes,
        strategy="ddp" if devices != 1 or args.num_nodes > 1 else "auto",
        precision=args.precision,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=args.out,
        use_distributed_sampler=False,  # each rank already holds only its own photos
    )
    # One photo per rank per step, cycling through the rank's share: every rank runs exactly --steps steps.
    trainer.fit(module, DataLoader(_Cycle(data, args.steps), batch_size=None))

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"weights_rank{trainer.global_rank}.sha256").write_text(weights_digest(module.unet) + "\n")
    if trainer.is_global_zero:
        save_finetuned(module, args.out / "network")
        summary = {"photos": [str(p) for p in args.photos], "world_size": trainer.world_size, "steps": args.steps}
        (args.out / "finetune.json").write_text(json.dumps(summary, indent=2) + "\n")


class _Cycle(IterableDataset):
    """A rank's prepared photos, one batch of one per step, in order, repeated for ``steps`` steps."""

    def __init__(self, data: Dataset, steps: int) -> None:
        self.data = data
        self.steps = steps

    def __iter__(self):  # type: ignore[no-untyped-def]
        n = len(self.data)  # type: ignore[arg-type]
        for step in range(self.steps):
            yield default_collate([self.data[step % n]])  # what a batch-of-one DataLoader would give

    def __len__(self) -> int:
        return self.steps


def _tiny_config(resolution: int) -> DDPMConfig:
    """A small UNet of the reference architecture (attention at the lower of its two levels)."""
    lower = resolution // 2
    return DDPMConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(lower,), resolution=resolution)


if __name__ == "__main__":
    main()

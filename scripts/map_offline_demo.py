"""Offline MAP demo: fine-tune a tiny score network so regenerated faces change expression and dodge recognition.

No pretrained face diffusion model is available offline, so a tiny DDPM UNet is first trained briefly as a denoiser
on the photos themselves (it learns to reconstruct them, not a face prior: expect blurry, not natural, edits). It is
then fine-tuned with MAP's objectives (:mod:`facecloak.stages.score_finetune`) on real photos from
``$FACECLOAK_SHARED/faces``, and the script reports, per photo, for the plain reconstruction (original network) and
the protected image (fine-tuned network):

* the face-api probability of the chosen expression (should rise);
* the cosine similarity to the user's own photo under the attacked model (dodging: should fall);
* the held-out native dlib descriptor similarity (never attacked), on crops upscaled to dlib's working size;
* PSNR / SSIM against the input crop.

A photo never used in fine-tuning is protected too, with the saved network, to show that no retraining is needed.

Usage: ``OMP_NUM_THREADS=1 python scripts/map_offline_demo.py [--finetune-steps 40] [--out /tmp/map_demo]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch.utils.data import DataLoader

from facecloak.diffusion import NoiseSchedule, ddim_generate, ddim_invert
from facecloak.faces.detect import build_detector
from facecloak.faces.regions import FACE_CROP_SCALE, square_face_crop
from facecloak.io.images import load_photo, save_png
from facecloak.losses.expression import ExpressionObjective
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference
from facecloak.models import dlib_native
from facecloak.models.ddpm import DDPMConfig, DDPMUNet
from facecloak.models.faceapi import load_faceapi_model
from facecloak.models.fr.zoo import load_fr_model
from facecloak.paths import shared_faces_dir
from facecloak.stages.score_finetune import ScoreFinetune, save_finetuned
from facecloak.stages.score_finetune_config import LossWeights, ScoreFinetuneConfig
from facecloak.stages.score_finetune_data import prepare_finetune_faces
from facecloak.stages.score_finetune_infer import protect_with_finetuned

RESOLUTION = 64
TINY_UNET = DDPMConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=RESOLUTION)
"""Levels at 64, 32 and 16 px, self-attention at 16 px (the reference places it at 16 px too)."""
TRAIN_PHOTOS = ("angelina_jolie/img1.jpg", "matt_damon/img29.jpg", "jennifer_aniston/img3.jpg")
NEW_PHOTO = "scarlett_johansson/img47.jpg"
"""A photo of someone else, never seen by either network, to protect with the saved fine-tuned network."""
ATTACKED = ("mobilefacenet_casia",)
DLIB_SIZE = 256
"""Crops are upscaled to this side before dlib's HOG-free descriptor path (dlib chips are 150 px from ~100 px faces)."""
MAX_PHOTO_SIDE = 640
PRETRAIN_LR = 2e-4


def load_crops(paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Real photos, cropped square around the MTCNN face and resized to the UNet's resolution."""
    detector = build_detector("mtcnn")
    images, landmarks = [], []
    for rel in paths:
        rgb = load_photo(shared_faces_dir() / rel, max_side=MAX_PHOTO_SIDE).rgb
        crop = square_face_crop(rgb, detector.detect(rgb)[0], RESOLUTION)
        images.append(crop.image01)
        landmarks.append(crop.landmarks5)
    return torch.stack(images), torch.stack(landmarks)


def pretrain_denoiser(unet: DDPMUNet, images01: torch.Tensor, steps: int, schedule: NoiseSchedule) -> list[float]:
    """Plain ε-prediction training on the photos (and their mirror images), so DDIM inversion round-trips them."""
    optimizer = torch.optim.Adam(unet.parameters(), lr=PRETRAIN_LR)
    data = torch.cat([images01, images01.flip(-1)]) * 2 - 1
    losses = []
    unet.train()
    for _ in range(steps):
        t = torch.randint(0, schedule.num_timesteps, (data.shape[0],))
        noise = torch.randn_like(data)
        loss = F.mse_loss(unet(schedule.add_noise(data, noise, t), t), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def dlib_similarity(a01: torch.Tensor, b01: torch.Tensor) -> float:
    """Cosine of native dlib descriptors of two crops, both upscaled to ``DLIB_SIZE`` with the same face box."""
    side = DLIB_SIZE / FACE_CROP_SCALE  # the detector box inside the crop, scaled with it
    lo, hi = round((DLIB_SIZE - side) / 2), round((DLIB_SIZE + side) / 2)
    box = (lo, lo, hi, hi)
    descriptors = []
    for image in (a01, b01):
        rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        rgb = cv2.resize(rgb, (DLIB_SIZE, DLIB_SIZE), interpolation=cv2.INTER_CUBIC)
        descriptors.append(dlib_native.face_descriptor(rgb, box))
    a, b = descriptors
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def to_uint8(image01: torch.Tensor) -> np.ndarray:
    """HWC uint8, the form metrics and image files take."""
    return (image01.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def evaluate(
    name: str,
    kind: str,
    image: torch.Tensor,
    original: torch.Tensor,
    landmarks: torch.Tensor,
    source: dict[str, torch.Tensor],
    identity: AdversarialIdentityLoss,
    expression: ExpressionObjective,
    boxes: torch.Tensor,
) -> dict[str, object]:
    """One row of the summary table."""
    with torch.no_grad():
        _, sims = identity(image[None], landmarks[None], IdentityReference(source=source))
        prob = expression.probability(image[None], boxes[None]).item()
    a, b = to_uint8(image), to_uint8(original)
    with np.errstate(divide="ignore"):  # the input against itself has infinite PSNR
        psnr = peak_signal_noise_ratio(b, a, data_range=255)
    return {
        "photo": name,
        "image": kind,
        "p(expr)": prob,
        **{f"cos {m}": float(s[0]) for m, s in sims["source"].items()},
        "cos dlib": dlib_similarity(image, original),
        "PSNR": psnr,
        "SSIM": structural_similarity(b, a, channel_axis=2, data_range=255),
    }


def print_table(rows: list[dict[str, object]]) -> None:
    """Aligned plain-text table, one row per photo and image kind."""
    columns = list(rows[0])
    print(" | ".join(f"{c:>22}" if i < 2 else f"{c:>20}" for i, c in enumerate(columns)))
    for row in rows:
        cells = [f"{v:>22}" if isinstance(v, str) else f"{v:>20.4f}" for v in row.values()]
        print(" | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expression", default="surprised")
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--finetune-steps", type=int, default=40)
    parser.add_argument("--t0", type=int, default=300)
    parser.add_argument("--inversion-steps", type=int, default=20)
    parser.add_argument("--generation-steps", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--landmark-weight", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/map_demo"))
    args = parser.parse_args()

    L.seed_everything(args.seed, verbose=False)
    started = time.time()
    schedule = NoiseSchedule()
    images, landmarks = load_crops(list(TRAIN_PHOTOS))
    new_image, new_landmarks = load_crops([NEW_PHOTO])

    original = DDPMUNet(TINY_UNET)
    losses = pretrain_denoiser(original, images, args.pretrain_steps, schedule)
    print(
        f"denoiser pre-training: {args.pretrain_steps} steps, ε-MSE {np.mean(losses[:20]):.3f} → "
        f"{np.mean(losses[-20:]):.3f} ({time.time() - started:.0f} s)"
    )
    original.eval()

    config = ScoreFinetuneConfig(
        expression=args.expression,
        identity_mode="dodge",
        t0=args.t0,
        inversion_steps=args.inversion_steps,
        generation_steps=args.generation_steps,
        lr=args.lr,
        weights=LossWeights(landmark=args.landmark_weight),
        seed=args.seed,
    )
    identity = AdversarialIdentityLoss([load_fr_model(name) for name in ATTACKED], mode="dodge")
    expression = ExpressionObjective(config.expression)
    landmark_net = load_faceapi_model("landmark68")
    data = prepare_finetune_faces(original, images, landmarks, config, identity, landmark_net, schedule=schedule)
    new_data = prepare_finetune_faces(original, new_image, new_landmarks, config, identity, landmark_net)

    module = ScoreFinetune(DDPMUNet(TINY_UNET), config, identity, expression, landmark_net, schedule)
    module.unet.load_state_dict(original.state_dict(), strict=True)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.finetune_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
    )
    tuned_at = time.time()
    trainer.fit(module, DataLoader(data, batch_size=len(data), shuffle=False))
    print(f"MAP fine-tuning: {args.finetune_steps} steps ({time.time() - tuned_at:.0f} s)")
    folder = save_finetuned(module, args.out / "finetuned_unet")
    finetuned = DDPMUNet.from_pretrained(folder)

    names = [*TRAIN_PHOTOS, f"{NEW_PHOTO} (new)"]
    all_images = torch.cat([images, new_image])
    all_landmarks = torch.cat([landmarks, new_landmarks])
    all_boxes = torch.cat([data.tensors["boxes"], new_data.tensors["boxes"]])
    sources = {m: torch.cat([data.tensors["source"][m], new_data.tensors["source"][m]]) for m in identity.names}
    with torch.no_grad():
        x_t0 = ddim_invert(original, schedule, all_images * 2 - 1, t0=config.t0, num_steps=config.inversion_steps)
        recon = (
            ddim_generate(original, schedule, x_t0, t0=config.t0, num_steps=config.generation_steps, grad_mode="none")
            + 1
        ) / 2
    protected = protect_with_finetuned(finetuned, all_images, config, original=original, schedule=schedule)

    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        source = {m: emb[i : i + 1] for m, emb in sources.items()}
        for kind, image in (
            ("input", all_images[i]),
            ("reconstruction", recon[i].clamp(0, 1)),
            ("MAP protected", protected[i]),
        ):
            rows.append(
                evaluate(name, kind, image, all_images[i], all_landmarks[i], source, identity, expression, all_boxes[i])
            )
        strip = np.concatenate([to_uint8(all_images[i]), to_uint8(recon[i]), to_uint8(protected[i])], axis=1)
        save_png(
            args.out / f"{i}_{name.split('/')[0]}.png",
            cv2.resize(strip, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST),
        )
    print(f"\nexpression: {config.expression}; attacked: {', '.join(ATTACKED)} (dodging); held out: native dlib")
    print_table(rows)
    print(
        f"\nimages (input | reconstruction | protected) and the fine-tuned network in {args.out}; "
        f"total {time.time() - started:.0f} s"
    )


if __name__ == "__main__":
    main()

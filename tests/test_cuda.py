"""What only a GPU can show (issue 12): marked ``cuda``, skipped without one; ``scripts/gpu_check.sh`` runs them.

Everything here uses only what the GPU check carries (no dlib, insightface, open_clip or W&B): the offline preset
at smoke size, face-api landmarks, the shared photos and weights.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from facecloak.diffusion.schedule import NoiseSchedule
from facecloak.faces.align import align_tensor
from facecloak.faces.templates import get_template
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference
from facecloak.models.fr.zoo import load_fr_model
from facecloak.models.stylegan2 import Generator, GeneratorConfig
from facecloak.runtime.clock import device_clock
from facecloak.runtime.devices import resolve_device
from facecloak.stages.fit import TRAINER_DEFAULTS, quiet_fit, steps_loader
from facecloak.stages.latent_search import AdversarialLatentSearch
from facecloak.stages.latent_search_config import LatentSearchConfig

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)"),
]

CHECK = ["preset=offline", "scale=smoke", "logger=none", "trainer.progress_bar=false", "faces.landmarks68=faceapi"]
CHECK += ["faces.refine_landmarks=false", "fr.held_out=[faceapi_dlib]", "protect.max_faces=1"]
"""The GPU check's configuration at smoke size: nothing that needs dlib's models."""
PHOTOS = ("jack_dorsey/img16.jpg", "elon_musk/img18.jpg")
SLEEP_CYCLES = 50_000_000
"""A GPU spin of tens of milliseconds (``torch.cuda._sleep``): long next to a kernel launch."""
SEARCH_STEPS = 8
CHECK_EVERY = 4
START_AND_END_SYNCS = 2
"""Syncs a fit may make outside its steps (the first and the last batch), on top of one per ``CHECK_EVERY`` steps."""


def test_device_auto_is_this_gpu_and_every_rank_finds_one() -> None:
    """``device: auto`` is cuda:0 here; a rank beyond the visible GPUs shares one instead of failing (defect 3)."""
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=torch.cuda.device_count()) == torch.device("cuda", 0)


def test_device_clock_waits_for_queued_kernels() -> None:
    started = time.perf_counter()
    torch.cuda._sleep(SLEEP_CYCLES)
    launched = time.perf_counter() - started
    finished = device_clock("cuda") - started
    assert finished > launched


def test_two_photos_on_the_gpu_keep_the_shared_networks_there(faces_dir: Path, tmp_path: Path) -> None:
    """A stage's teardown must not move the job's base generator to the CPU (defect 1): photo 2 would crash."""
    from facecloak.config.compose import compose
    from facecloak.protect.methods import build_protector
    from facecloak.protect.pipeline import image_id_for

    protector = build_protector(compose([*CHECK, "device=cuda"]), stage_dir=tmp_path / ".stages")
    for name in PHOTOS:
        record = protector.protect_photo(faces_dir / name, image_id_for(faces_dir / name), tmp_path)
        assert len(record["faces"]) == 1
        assert next(protector.generator.parameters()).device.type == "cuda"


def test_alignment_and_schedule_never_wait_for_the_gpu() -> None:
    """Run every step: the FR crop and ᾱ lookups read no device value (``set_sync_debug_mode`` raises on a sync)."""
    images = torch.rand(2, 3, 1024, 1024, device="cuda")
    landmarks = torch.as_tensor(get_template("arcface_112").scaled(1024).points_array(), device="cuda").float()
    schedule = NoiseSchedule()
    steps = torch.tensor([3, 999], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        crops = align_tensor(images, landmarks.expand(2, 5, 2) * 0.4 + 100, get_template("arcface_112"))
        alpha = schedule.alpha_bar(steps, images)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert crops.shape == (2, 3, 112, 112) and alpha.shape == (2, 1, 1, 1)


class SyncCounter(L.Callback):
    """Counts CUDA's sync warnings (``set_sync_debug_mode("warn")``) from the first step's start to the last's end."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._catcher: warnings.catch_warnings | None = None
        self._caught: list[warnings.WarningMessage] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *args: object) -> None:
        """Start counting at the first step."""
        if self._catcher is None:
            self._catcher = warnings.catch_warnings(record=True)
            self._caught = self._catcher.__enter__() or []
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Stop counting and keep the sync warnings' messages."""
        torch.cuda.set_sync_debug_mode("default")
        if self._catcher is not None:
            self._catcher.__exit__(None, None, None)
        self.seen = [str(w.message) for w in self._caught if "synchroniz" in str(w.message)]


def test_search_syncs_with_the_gpu_only_every_n_steps(tmp_path: Path) -> None:
    """The CPU count of host reads (test_latent_search) checked where it matters, with CUDA's own sync detector."""
    torch.manual_seed(0)
    config = GeneratorConfig(size=64, style_dim=64, n_mlp=2, channel_base=512, channel_max=32)
    generator = Generator(config).eval().cuda()
    with torch.no_grad():
        pivots = generator.mapping(torch.randn(2, config.style_dim, device="cuda"))[:, None].repeat(
            1, generator.n_latent, 1
        )
    noise = [n.cuda() for n in generator.make_noise(2)]
    landmarks = torch.as_tensor(get_template("arcface_112").scaled(config.size).points_array()).float()
    landmarks5 = landmarks.expand(2, 5, 2).clone().cuda()
    identity = AdversarialIdentityLoss([load_fr_model("mobilefacenet_casia", "cuda")], mode="dodge")
    with torch.no_grad():
        source = identity.embed((generator.synthesis(pivots, noise) + 1) / 2, landmarks5)
    search = LatentSearchConfig(identity_mode="dodge", lambda_clip=0.0, steps=SEARCH_STEPS, early_stop=True)
    module = AdversarialLatentSearch(generator, pivots, noise, landmarks5, ["a", "b"], identity,
                                     IdentityReference(source), {"mobilefacenet_casia": -1.0}, search)  # fmt: skip
    syncs = SyncCounter()
    trainer = L.Trainer(**{**TRAINER_DEFAULTS, "accelerator": "gpu", "devices": [0], "default_root_dir": tmp_path,
                           "callbacks": [syncs], "log_every_n_steps": CHECK_EVERY}, max_steps=SEARCH_STEPS)  # fmt: skip
    quiet_fit(trainer, module, steps_loader(SEARCH_STEPS))
    assert trainer.global_step == SEARCH_STEPS
    assert len(syncs.seen) <= SEARCH_STEPS // CHECK_EVERY + START_AND_END_SYNCS, syncs.seen[:5]


def test_bf16_search_step_keeps_fp32_losses() -> None:
    """Under bf16 autocast the identity loss is still computed in fp32 (defect 4's islands, on the GPU's kernels)."""
    model = load_fr_model("mobilefacenet_casia", "cuda")
    identity = AdversarialIdentityLoss([model], mode="dodge")
    images = torch.rand(1, 3, 128, 128, device="cuda", requires_grad=True)
    landmarks = torch.as_tensor(get_template("arcface_112").scaled(128).points_array(), device="cuda").float()[None]
    with torch.no_grad():
        reference = IdentityReference(identity.embed(images.detach(), landmarks))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = identity(images, landmarks, reference)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()

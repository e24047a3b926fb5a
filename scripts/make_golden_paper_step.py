"""Record CLIP2Protect's own stage-2 step (official code, CPU) as golden numbers for tests/test_golden_paper_step.py.

What runs: ``Adversarial_Opt.run()`` of github.com/fahadshamshad/Clip2Protect (``adversarial_optimization.py``) for
3 steps on one image, unmodified, with only these run-time patches (nothing of it is copied into facecloak):

- CPU: ``.cuda()`` is the identity and ``.to("cuda")`` goes to the CPU (its custom ops are pure PyTorch already);
- the StyleGAN2 channel table is narrowed at import (``min(2048 // res, 32)``, the golden stylegan2 config); the
  generator is 64 px with 512-d styles (its step hard-codes ``torch.zeros(8, 512)``), 10 W+ slots, so the
  reference's fixed ``grad[0][0:8] = 0`` leaves slots 8-9;
- ``torch.load`` of its files returns in-memory objects: weights from ``detweights.py`` (seed 0) for the generator,
  the four FR models (golden ``fr_*/keys.json``) and CLIP ViT-B/32 (open_clip's key order, loaded into the
  reference's own ``clip.model`` through ``clip.load``), a fixed latent and noise;
- MTCNN's box of the (synthetic) source is a fixed box, the target is a fixed tensor (``get_target``), images are
  not saved, and torchvision's RandomPerspective draws its corners from ``image_rng(SEED, IMAGE_ID, "clip")`` (the
  stream facecloak's search uses for that image), so both runs warp with the same corners.

It also records the box-crop FR input on one real face (``$FACECLOAK_SHARED/faces``): the reference's MTCNN box
(facenet-pytorch, margin 0) and its four embeddings of that crop (``get_source_embedding``).

Everything runs with one intra-op thread (``RECORDING_THREADS``, stored as ``torch_threads``), and the test replays
with the same count. The reason is measured, not a precaution: at this point the FR networks' float32 input
gradients sit on ReLU/PReLU kinks. In IR-SE-50 one pre-activation is 2.1e-7 in float64 and -1.2e-7 in float32, so
the rounding picks the PReLU slope; that one element moves the layer's gradient by 1.1e-2 and the input gradient by
4e-3 (6e-4 to 4e-3 for the four networks against float64). The thread count changes how the kernels round,
so the reference's own latent gradient moves by 9.75e-4 relative (noise maps 3-4e-3) between 1 and 2 threads,
while facecloak and the reference at the same count agree to 1e-6.

Rerun (not part of CI; a few minutes on a CPU):

    fetch github:fahadshamshad/Clip2Protect and check it out, e.g.
      git --git-dir=<mirror> --work-tree=/tmp/c2p_ref checkout HEAD -- .
    PYTHONPATH=src FACECLOAK_SHARED=../shared python scripts/make_golden_paper_step.py \\
      --reference /tmp/c2p_ref --out tests/golden_data/paper_step.npz

Reference commit used for the committed numbers: the ``reference_commit`` entry of the npz.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SEED = 0
"""Seed of the latent, the noise maps and (through image_rng) the augmentation."""
IMAGE_ID = "golden"
STEPS = 3
SOURCE_BOX = (14.4, 17.6, 50.5, 58.5)
"""Fixed "MTCNN" box (x0, y0, x1, y1) of the 64 px synthetic source, as the reference rounds it."""
TARGET_BOX = (12, 10, 54, 60)
"""Crop (x0, y0, x1, y1) of the target photo, as the reference's hard-coded target boxes."""
HELD_OUT = "facenet"
"""Reference ``--model``: the held-out model; the other three are attacked."""
GENERATOR_SHAPE = (64, 512, 2)
"""size, style_dim, n_mlp of the generator (channel table narrowed to min(2048 // res, 32))."""
REAL_FACE = "jennifer_aniston/img12.jpg"
RECORDING_THREADS = 1
"""Intra-op threads of the recording (see the module docstring); the test replays with this count."""


def shared_root() -> Path:
    from facecloak.paths import shared_root as root

    return root()


def detweights() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("detweights", shared_root() / "golden" / "detweights.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def golden_state(folder: str) -> dict[str, torch.Tensor]:
    det = detweights()
    return det.deterministic_state_dict(det.load_keys(shared_root() / "golden" / folder / "keys.json"), 0)


def generator_state() -> dict[str, torch.Tensor]:
    """Deterministic weights of the narrow 64 px generator with the reference's 512-d styles.

    (Its step hard-codes ``torch.zeros(8, 512)``.) Keys in facecloak's order, which the golden stylegan2 test proves
    equals the reference's.
    """
    from facecloak.models.stylegan2 import Generator, GeneratorConfig

    model = Generator(GeneratorConfig(*GENERATOR_SHAPE, channel_base=2048, channel_max=32))
    keys = {k: {"shape": list(v.shape), "dtype": "float32"} for k, v in model.state_dict().items()}
    return detweights().deterministic_state_dict(keys, 0)


def clip_state() -> dict[str, torch.Tensor]:
    """Deterministic ViT-B/32 weights in open_clip's key order (what facecloak's test rebuilds)."""
    import open_clip

    model = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    keys = {k: {"shape": list(v.shape), "dtype": "float32"} for k, v in model.state_dict().items()}
    return detweights().deterministic_state_dict(keys, 0)


def synthetic_inputs() -> dict[str, np.ndarray]:
    """Fixed latent, noise, source and target images from SEED (uint8 images: PNG and cv2 read them exactly)."""
    g = torch.Generator().manual_seed(SEED)
    latent = torch.randn(1, 10, 512, generator=g)
    noise = [torch.randn(1, 1, r, r, generator=g) for r in (4, 8, 8, 16, 16, 32, 32, 64, 64)]
    source = (torch.rand(64, 64, 3, generator=g) * 255).round().to(torch.uint8)
    target = (torch.rand(64, 64, 3, generator=g) * 255).round().to(torch.uint8)
    out = {"latent": latent.numpy(), "source_uint8": source.numpy(), "target_uint8": target.numpy()}
    out.update({f"noise_{i}": n.numpy() for i, n in enumerate(noise)})
    return out


def patch_cpu() -> None:
    """``.cuda()`` is the identity; ``.to("cuda")`` (string or device) goes to the CPU."""

    def cpu(device: Any) -> Any:
        text = str(device) if isinstance(device, (str, torch.device)) else None
        return "cpu" if text is not None and text.startswith("cuda") else device

    tensor_to, module_to = torch.Tensor.to, nn.Module.to
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.Tensor.to = lambda self, *a, **k: tensor_to(
        self,
        *[cpu(x) for x in a],
        **{  # type: ignore[method-assign]
            key: cpu(v) for key, v in k.items()
        },
    )
    nn.Module.to = lambda self, *a, **k: module_to(
        self,
        *[cpu(x) for x in a],
        **{  # type: ignore[method-assign]
            key: cpu(v) for key, v in k.items()
        },
    )


def import_narrow_stylegan2(reference: Path) -> types.ModuleType:
    """The reference's ``models/stylegan2/model.py`` with its channel table narrowed (golden stylegan2 config)."""
    path = reference / "models" / "stylegan2" / "model.py"
    source = path.read_text()
    narrow = "self.channels = {res: min(2048 // res, 32) for res in (4, 8, 16, 32, 64, 128, 256, 512, 1024)}"
    source, count = re.subn(r"self\.channels = \{[^}]*\}", narrow, source, count=1)
    assert count == 1, "channel table not found in the reference's StyleGAN2"
    module = types.ModuleType("models.stylegan2.model")
    module.__file__ = str(path)
    sys.modules["models.stylegan2.model"] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


class Recorder:
    """What each reference step computed: loss terms, gradients, updated latent."""

    def __init__(self) -> None:
        self.steps: list[dict[str, np.ndarray]] = []
        self.source_embeddings: dict[str, np.ndarray] = {}
        self.step_ends: list[float] = []
        """perf_counter() after each optimizer step (for scripts/bench_paper_step.py)."""


def run_reference(reference: Path, steps: int = STEPS) -> tuple[dict[str, np.ndarray], Recorder]:
    from facecloak.stages.latent_search import image_rng

    sys.path.insert(0, str(reference))
    patch_cpu()
    stylegan = import_narrow_stylegan2(reference)
    import torchvision
    from torchvision import transforms

    torchvision.utils.save_image = lambda *a, **k: None  # results are not written
    inputs = synthetic_inputs()
    generator = stylegan.Generator(*GENERATOR_SHAPE).eval()
    generator.load_state_dict(generator_state(), strict=True)

    fr_states = {
        "mobile_face.pth": golden_state("fr_mobileface"),
        "facenet.pth": golden_state("fr_facenet"),
        "ir152.pth": golden_state("fr_ir152"),
        "irse50.pth": golden_state("fr_irse50"),
    }
    tmp = Path(tempfile.mkdtemp(prefix="c2p_golden_"))
    (tmp / "data").mkdir()
    (tmp / "ckpt").mkdir()
    from PIL import Image

    Image.fromarray(inputs["source_uint8"]).save(tmp / "data" / "source.jpg", format="PNG")  # lossless, any name
    (tmp / "ckpt" / "g.pt").write_bytes(b"")
    noise = [torch.from_numpy(inputs[f"noise_{i}"]).clone() for i in range(9)]
    files = {
        str(tmp / "latents.pt"): torch.from_numpy(inputs["latent"]).clone(),
        str(tmp / "noises.pt"): [noise],
        str(tmp / "ckpt" / "g.pt"): generator,
    }
    real_load = torch.load

    def load(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = str(path)
        if key in files:
            return files[key]
        if Path(key).name in fr_states:
            return {k: v.clone() for k, v in fr_states[Path(key).name].items()}
        return real_load(path, *args, **kwargs)

    torch.load = load  # type: ignore[assignment]

    import clip as reference_clip

    def clip_load(name: str, device: Any = "cpu", jit: bool = False, download_root: Any = None) -> Any:
        assert name == "ViT-B/32"
        state = clip_state()
        state.update(
            input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408)
        )
        model = reference_clip.model.build_model(state).float().eval()
        return model, reference_clip.clip._transform(model.visual.input_resolution)

    reference_clip.load = clip_load

    augment_rng = image_rng(SEED, IMAGE_ID, "clip")
    original_get_params = transforms.RandomPerspective.get_params

    def get_params(width: int, height: int, distortion_scale: float) -> Any:
        real_randint = torch.randint
        torch.randint = functools.partial(real_randint, generator=augment_rng)  # type: ignore[assignment]
        try:
            return original_get_params(width, height, distortion_scale)
        finally:
            torch.randint = real_randint  # type: ignore[assignment]

    transforms.RandomPerspective.get_params = staticmethod(get_params)  # type: ignore[method-assign]

    import adversarial_optimization as adv

    target = torch.from_numpy(inputs["target_uint8"]).float().div(255).permute(2, 0, 1)[None]
    x0, y0, x1, y1 = TARGET_BOX
    target = ((target - 0.5) / 0.5)[:, :, y0:y1, x0:x1]
    adv.get_target = lambda choice, margin: (target.clone(), target.clone())
    adv.alignment = lambda image: np.array(SOURCE_BOX, dtype=np.float32)

    recorder = Recorder()
    calculate_loss = adv.Adversarial_Opt.calculate_loss

    def recording_loss(self: Any, model: str, l2: Any, c: Any, *adv_terms: Any) -> Any:
        loss = calculate_loss(self, model, l2, c, *adv_terms)
        names = ("mobile_face", "facenet", "ir152", "irse50")
        step = {"loss": loss, "latent": l2, "clip": c}
        step.update({f"adv_source/{n}": t for n, t in zip(names, adv_terms[:4])})
        step.update({f"adv_target/{n}": t for n, t in zip(names, adv_terms[4:])})
        recorder.steps.append({k: np.asarray(float(v)) for k, v in step.items()})
        return loss

    adv.Adversarial_Opt.calculate_loss = recording_loss
    get_source = adv.Adversarial_Opt.get_source_embedding

    def recording_source(self: Any, path: str) -> Any:
        out = get_source(self, path)
        for name, emb in zip(("mobile_face", "facenet", "ir152", "irse50"), out[1:]):
            recorder.source_embeddings[name] = emb.detach().numpy().copy()
        return out

    adv.Adversarial_Opt.get_source_embedding = recording_source

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure: Any = None) -> Any:
            params = self.param_groups[0]["params"]
            record = recorder.steps[-1]
            record["grad_latent"] = params[0].grad.detach().numpy().copy()
            for i, p in enumerate(params[1:]):
                record[f"grad_noise_{i}"] = p.grad.detach().numpy().copy()
            out = super().step(closure)
            record["latent_after"] = params[0].detach().numpy().copy()
            for i, p in enumerate(params[1:]):
                record[f"noise_after_{i}"] = p.detach().numpy().copy()
            recorder.step_ends.append(time.perf_counter())
            return out

    real_adam = torch.optim.Adam
    torch.optim.Adam = RecordingAdam  # type: ignore[misc]
    args = argparse.Namespace(
        num_aug=1,
        source_text="face",
        makeup_prompt="red lipstick",
        steps=steps,
        target_choice="2",
        model=HELD_OUT,
        impersonate=True,
        noise_optimize=True,
        margin=0,
        lambda_lat=0.01,
        lambda_clip=0.3,
        lambda_adv=0.7,
        protected_face_dir=str(tmp),
        data_dir=str(tmp / "data"),
        checkpoint_dir=str(tmp / "ckpt"),
        latent_path=str(tmp / "latents.pt"),
        noise_path=str(tmp / "noises.pt"),
    )
    opt = adv.Adversarial_Opt(args)
    recorder.step_ends.append(time.perf_counter())  # the first step's start (after set-up)
    opt.run()
    torch.load = real_load  # type: ignore[assignment]
    torch.optim.Adam = real_adam  # type: ignore[misc]
    transforms.RandomPerspective.get_params = staticmethod(original_get_params)  # type: ignore[method-assign]
    adv.Adversarial_Opt.get_source_embedding = get_source
    real_face = box_crop_reference(opt, adv)
    return {**inputs, **real_face}, recorder


def box_crop_reference(opt: Any, adv: types.ModuleType) -> dict[str, np.ndarray]:
    """The reference's box (its MTCNN on a real photo) and its four embeddings of that box crop."""
    from facenet_pytorch import MTCNN
    from PIL import Image

    path = shared_root() / "faces" / REAL_FACE
    mtcnn = MTCNN(image_size=1024, margin=0, post_process=False, select_largest=False, device="cpu")
    box = mtcnn.detect(Image.open(path))[0][0]
    adv.alignment = lambda image: box
    out = adv.Adversarial_Opt.get_source_embedding(opt, str(path))
    names = ("mobile_face", "facenet", "ir152", "irse50")
    result = {"real_face_box": np.asarray(box, dtype=np.float64)}
    result.update({f"real_face_embedding/{n}": e.detach().numpy() for n, e in zip(names, out[1:])})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="checkout of fahadshamshad/Clip2Protect")
    parser.add_argument("--out", type=Path, default=Path("tests/golden_data/paper_step.npz"))
    parser.add_argument("--commit", help="the checkout's commit, when --reference is not a git work tree")
    args = parser.parse_args()
    torch.set_num_threads(RECORDING_THREADS)
    reference = args.reference.resolve()
    inputs, recorder = run_reference(reference)
    arrays: dict[str, Any] = dict(inputs)
    for step, record in enumerate(recorder.steps, start=1):
        arrays.update({f"step{step}/{k}": v for k, v in record.items()})
    arrays.update({f"source_embedding/{k}": v for k, v in recorder.source_embeddings.items()})
    try:
        commit = subprocess.run(
            ["git", "-C", str(reference), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = args.commit or "unknown"
    arrays.update(
        reference_commit=np.asarray(commit),
        seed=np.asarray(SEED),
        image_id=np.asarray(IMAGE_ID),
        steps=np.asarray(STEPS),
        source_box=np.asarray(SOURCE_BOX),
        target_box=np.asarray(TARGET_BOX),
        held_out=np.asarray(HELD_OUT),
        real_face=np.asarray(REAL_FACE),
        torch_version=np.asarray(torch.__version__),
        torch_threads=np.asarray(torch.get_num_threads()),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB, {len(recorder.steps)} steps)")
    for step, record in enumerate(recorder.steps, start=1):
        print(step, {k: float(v) for k, v in record.items() if v.ndim == 0})


if __name__ == "__main__":
    main()

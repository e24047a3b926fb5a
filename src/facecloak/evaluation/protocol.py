"""The papers' benchmark data and our own labelled photos, loaded as items with explicit image ids.

Every item carries an ``image_id`` (unique within its dataset), its ``path`` and, where known, its ``identity``;
results are joined on ``image_id``, never on the order in which files happen to be listed.

Expected layouts
----------------
AMT-GAN ``assets.zip`` (CGCL-codes/AMT-GAN, reused by CLIP2Protect and DiffAM), unzipped so that ``root`` is the
``assets`` folder (``root/datasets/...``) or the ``datasets`` folder itself::

    assets/
      datasets/
        CelebA-HQ/   000123.jpg ...   the 1000 CelebA-HQ test faces (1024×1024); ids are the file stems
        LADN/        *.png|*.jpg      the LADN test faces (a ``before/`` sub-folder is also accepted)
        target/      005869.jpg 085807.jpg 116481.jpg 169284.jpg   target photos used during optimisation
        test/        008793.jpg 047073.jpg 055622.jpg 166607.jpg   other photos of the same four targets, for
                                                                    evaluation only
      models/        ir152.pth irse50.pth facenet.pth mobile_face.pth

CelebA-HQ and LADN faces come without identity labels (``identity`` is None). The four targets pair an
optimisation photo with a *different* photo of the same person: CLIP2Protect
``utils/clip2protect_utils.get_target`` (choices '1'..'4', with face crops given as row/column slices) and DiffAM
``utils/image_processing.get_target_image`` name the same files; AMT-GAN's ``train.py``/``demo.py`` default to
target 085807 / test 047073 (choice '2').

Our labelled folders (e.g. ``$FACECLOAK_SHARED/faces``)::

    faces/
      labels.csv          header ``identity,path``; path relative to this folder
      <person>/<file>.jpg

their ids are the relative paths without the suffix (``angelina_jolie/img1``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from facecloak.verify.labelled import LayoutError, layout_error, read_labels

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CELEBA_HQ_DIR = "CelebA-HQ"
CELEBA_HQ_TEST_SIZE = 1000  # the CelebA-HQ test list of AMT-GAN / CLIP2Protect
LADN_DIRS = ("LADN/before", "LADN")  # first existing one wins
TARGET_DIR, TARGET_EVAL_DIR = "target", "test"

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), end exclusive


ProtocolLayoutError = LayoutError
"""A benchmark folder or file is missing or malformed; the message shows the expected layout."""


@dataclass(frozen=True)
class ProtocolItem:
    """One photo of a benchmark: explicit id, where it is, whose face it is (None when unknown)."""

    image_id: str
    path: Path
    identity: str | None
    dataset: str


@dataclass(frozen=True)
class ProtocolDataset:
    """A loaded benchmark split: items in a stable order, unique ids, and whether it has its published size."""

    name: str
    root: Path
    items: tuple[ProtocolItem, ...]
    expected_size: int | None = None

    def __iter__(self) -> Iterator[ProtocolItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def complete(self) -> bool:
        """True when the folder holds exactly the published number of images (or no size is published)."""
        return self.expected_size is None or len(self.items) == self.expected_size

    def by_id(self) -> dict[str, ProtocolItem]:
        """Items keyed by image id, for joining results."""
        return {item.image_id: item for item in self.items}


# ---------------------------------------------------------------- the four impersonation targets


@dataclass(frozen=True)
class TargetSpec:
    """A target identity of the papers: optimisation photo, a different evaluation photo, and their face boxes."""

    choice: str
    target_file: str
    eval_file: str
    target_box: Box
    eval_box: Box


# Files and crops from CLIP2Protect utils/clip2protect_utils.py get_target() (crop slices [y0:y1, x0:x1] with
# margin 0, rewritten as (x0, y0, x1, y1)); the same files appear in DiffAM's get_target_image().
PAPER_TARGETS: tuple[TargetSpec, ...] = (
    TargetSpec("1", "005869.jpg", "008793.jpg", (205, 168, 765, 912), (202, 145, 775, 920)),
    TargetSpec("2", "085807.jpg", "047073.jpg", (244, 187, 764, 891), (266, 234, 791, 905)),
    TargetSpec("3", "116481.jpg", "055622.jpg", (188, 214, 773, 955), (198, 185, 780, 931)),
    TargetSpec("4", "169284.jpg", "166607.jpg", (233, 173, 792, 925), (219, 172, 779, 917)),
)
DEFAULT_TARGET = "2"  # AMT-GAN's train.py / demo.py default and CLIP2Protect's --target_choice default


@dataclass(frozen=True)
class TargetIdentity:
    """A loaded target: attack towards ``target``, judge success against ``evaluation`` (never the same photo)."""

    spec: TargetSpec
    target: ProtocolItem
    evaluation: ProtocolItem


# ---------------------------------------------------------------- helpers


def _layout_error(problem: str, layout: str) -> LayoutError:
    return layout_error(problem, layout)


_AMTGAN_LAYOUT = """  assets/datasets/CelebA-HQ/*.jpg            (1000 CelebA-HQ test faces)
  assets/datasets/LADN/*.png|*.jpg            (LADN test faces; LADN/before/ also accepted)
  assets/datasets/target/005869.jpg 085807.jpg 116481.jpg 169284.jpg
  assets/datasets/test/008793.jpg 047073.jpg 055622.jpg 166607.jpg
Download AMT-GAN's assets.zip (github.com/CGCL-codes/AMT-GAN, 'Download assets') and unzip it."""


def datasets_dir(root: str | os.PathLike[str]) -> Path:
    """The ``datasets`` folder of an unzipped AMT-GAN assets tree, given ``assets/`` or ``assets/datasets/``."""
    root = Path(root).expanduser()
    for candidate in (root / "datasets", root):
        if candidate.is_dir() and any((candidate / d).is_dir() for d in (CELEBA_HQ_DIR, TARGET_DIR, "LADN")):
            return candidate
    raise _layout_error(f"no AMT-GAN datasets folder found at {root}", _AMTGAN_LAYOUT)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_dataset(name: str, folder: Path, expected_size: int | None) -> ProtocolDataset:
    files = _image_files(folder)
    if not files:
        raise _layout_error(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}", _AMTGAN_LAYOUT)
    stems = [p.stem for p in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise _layout_error(
            f"{name}: image ids {duplicates[:5]} appear with several suffixes in {folder}", _AMTGAN_LAYOUT
        )
    items = tuple(ProtocolItem(p.stem, p, None, name) for p in files)
    return ProtocolDataset(name, folder, items, expected_size)


# ---------------------------------------------------------------- loaders


def load_celeba_hq(root: str | os.PathLike[str]) -> ProtocolDataset:
    """The CelebA-HQ test faces of AMT-GAN's assets (check ``.complete`` for the full 1000)."""
    folder = datasets_dir(root) / CELEBA_HQ_DIR
    if not folder.is_dir():
        raise _layout_error(f"CelebA-HQ folder missing: {folder}", _AMTGAN_LAYOUT)
    return _folder_dataset("celeba_hq", folder, CELEBA_HQ_TEST_SIZE)


def load_ladn(root: str | os.PathLike[str]) -> ProtocolDataset:
    """The LADN test faces (``datasets/LADN/`` or ``datasets/LADN/before/``)."""
    base = datasets_dir(root)
    for relative in LADN_DIRS:
        folder = base / relative
        if folder.is_dir() and _image_files(folder):
            return _folder_dataset("ladn", folder, None)
    raise _layout_error(
        f"LADN images missing: none of {[str(base / d) for d in LADN_DIRS]} holds images", _AMTGAN_LAYOUT
    )


def load_targets(root: str | os.PathLike[str], choices: tuple[str, ...] | None = None) -> dict[str, TargetIdentity]:
    """The papers' impersonation targets by choice ('1'..'4'), each with its separate evaluation photo."""
    base = datasets_dir(root)
    specs = {spec.choice: spec for spec in PAPER_TARGETS}
    wanted = choices or tuple(specs)
    unknown = [c for c in wanted if c not in specs]
    if unknown:
        raise _layout_error(f"unknown target choices {unknown}; the papers define {sorted(specs)}", _AMTGAN_LAYOUT)
    targets = {}
    for choice in wanted:
        spec = specs[choice]
        identity = f"target{choice}"
        paths = (base / TARGET_DIR / spec.target_file, base / TARGET_EVAL_DIR / spec.eval_file)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise _layout_error(f"target {choice}: missing {', '.join(missing)}", _AMTGAN_LAYOUT)
        target, evaluation = (ProtocolItem(p.stem, p, identity, f"targets/{p.parent.name}") for p in paths)
        targets[choice] = TargetIdentity(spec, target, evaluation)
    return targets


def load_labelled_folder(root: str | os.PathLike[str], name: str = "labelled") -> ProtocolDataset:
    """Photos listed in ``labels.csv`` (``identity,path``), ids by :func:`facecloak.verify.labelled.read_labels`."""
    photos = read_labels(root)
    items = tuple(ProtocolItem(p.image_id, p.path, p.identity, name) for p in photos)
    return ProtocolDataset(name, Path(root).expanduser(), items)

"""Labelled photo folders (``labels.csv``): the one reader, the one image-id rule.

``fr calibrate``, ``evaluate`` and the benchmark scripts all read labelled folders here, so a photo has the same id in
every report: its path relative to the folder, without the suffix (``angelina_jolie/img1``). Results are joined on
that id, never on the order in which files happen to be listed.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from facecloak.errors import FacecloakError

LABELS_FILE = "labels.csv"
LABEL_COLUMNS = ("identity", "path")
LABELLED_LAYOUT = """  <root>/labels.csv      with header 'identity,path' (path relative to <root>)
  <root>/<person>/<photo>.jpg"""


class LayoutError(FacecloakError, FileNotFoundError):
    """A labelled or benchmark folder is missing or malformed; the message shows the expected layout."""


def layout_error(problem: str, layout: str = LABELLED_LAYOUT) -> LayoutError:
    """The error for a malformed folder, with the layout it should have."""
    return LayoutError(f"{problem}\nExpected layout:\n{layout}")


@dataclass(frozen=True)
class LabelledPhoto:
    """One photo of a labelled folder: its explicit id, whose face it is, and the file."""

    image_id: str
    identity: str
    path: Path


def labelled_image_id(relative: str) -> str:
    """The id of a photo listed as ``relative`` in labels.csv: the relative path without its suffix."""
    return Path(relative).with_suffix("").as_posix()


def read_labels(root: str | os.PathLike[str]) -> list[LabelledPhoto]:
    """Every photo listed in ``root/labels.csv`` (``identity,path``), in file order; malformed rows are errors."""
    root = Path(root).expanduser()
    labels = root / LABELS_FILE
    if not labels.is_file():
        raise layout_error(f"{labels} not found")
    with labels.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not set(LABEL_COLUMNS) <= set(reader.fieldnames):
            raise layout_error(f"{labels}: header must contain {','.join(LABEL_COLUMNS)}")
        rows = list(reader)
    photos, seen = [], set()
    for line, row in enumerate(rows, start=2):
        identity, relative = (row["identity"] or "").strip(), (row["path"] or "").strip()
        if not identity or not relative:
            raise layout_error(f"{labels}:{line}: empty identity or path")
        path = root / relative
        if not path.is_file():
            raise layout_error(f"{labels}:{line}: photo {path} does not exist")
        image_id = labelled_image_id(relative)
        if image_id in seen:
            raise layout_error(f"{labels}:{line}: image id '{image_id}' listed twice")
        seen.add(image_id)
        photos.append(LabelledPhoto(image_id, identity, path))
    if not photos:
        raise layout_error(f"{labels} lists no photos")
    return photos

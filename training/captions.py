"""Captions for the visual branch (paper Section 3.3): MELD.Raw clips -> a captioner -> a JSONL cache, and the
cache's Sentence-BERT embeddings (cached as safetensors).

    python -m training.captions --video_dir MELD.Raw --captioner cue-fallback [--shard 0/4] [--out captions]
    python -m training.captions --video_dir MELD.Raw --captioner qwen2.5-vl --qwen_path DIR --device cuda
    python -m training --config ... --caption_source=captions      # a JSONL file or a folder of them

Every utterance gets one record, keyed ``split/dia{D}_utt{U}`` and stamped with the captioner's id (which
captioner, with which weights and settings). A clip the manifest check finds missing, unreadable or not as long
as the CSV's Start/EndTime says gets a record with that status and no caption: listed in the run's manifest
report and skipped, never a crash and never dropped silently (MELD's silent clips, without sound, are captioned
as any other: captions use the frames only). The emotion-word filter is applied before a caption is stored.
Clips are captioned ``--batch_size`` at a time (Qwen2.5-VL: one left-padded ``generate``). Each shard
(``--shard i/n``: every n-th utterance from the i-th) appends to its own file, one line per utterance, flushed
after every batch, so a killed run resumes where it stopped.

Without MELD videos or Qwen2.5-VL weights there are no real captions: ``caption_source: none`` makes the run
text-only and every report says so.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

from ddvlm_core.assets import resolve_model
from ddvlm_core.captioner import captioner_id, filter_emotion_words
from ddvlm_core.meld import SPLITS, MeldUtterance, dialogues
from training.features import save_atomically
from training.video import error_text

CAPTIONERS = ("cue-fallback", "qwen2.5-vl")


# --- the cache: JSONL records --------------------------------------------------------------------------------

def read_captions(path: str | Path) -> dict[str, dict]:
    """key -> record from a JSONL file, or from every ``*.jsonl`` in a folder (a captioning run's shards); a later
    line for the same key wins (resumed runs append). A line cut short by a kill (the file's last, without its
    newline) is not a record; any other bad line is an error, and so are records of two different captioners."""
    path = require_caption_source(path)
    records: dict[str, dict] = {}
    for file in sorted(path.glob("*.jsonl")) if path.is_dir() else [path]:
        text = file.read_text(encoding="utf-8")
        lines = text.split("\n")
        if not text.endswith("\n"):
            lines = lines[:-1]  # killed mid-write: the run that resumes rewrites it
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                records[rec["key"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{file}:{n}: not a caption record ({e})") from None
    ids = sorted({r.get("captioner", "") for r in records.values()})
    if len(ids) > 1:
        raise ValueError(f"{path}: captions of more than one captioner {ids}: keep one captioner's files per folder")
    return records


def require_caption_source(path: str | Path) -> Path:
    """``path`` as a Path when it is a captions file or a folder holding some; FileNotFoundError saying how to make
    one otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"caption_source {str(path)!r}: no such captions file or folder (write one with "
                                "`python -m training.captions`, or use caption_source: none)")
    if path.is_dir() and not any(path.glob("*.jsonl")):
        raise FileNotFoundError(f"caption_source {str(path)!r}: a folder without captions (no *.jsonl; write them "
                                "there with `python -m training.captions --out FOLDER`, or use caption_source: none)")
    return path


def repair_partial_line(path: Path) -> None:
    """Drop a last line that a kill cut short, so that appending starts on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


# --- producing captions ------------------------------------------------------------------------------------------

def make_captioner(name: str, qwen_path: str = "", device: str = "cpu", frames: int = 4, max_new_tokens: int = 96,
                   dtype: str | None = None):
    """The captioner a run uses: the paper's Qwen2.5-VL from a local folder (``dtype`` e.g. "bfloat16" on a GPU;
    default: the checkpoint's), or the offline OpenCV fallback."""
    from ddvlm_core.captioner import CueCaptioner, QwenVLCaptioner

    if name == "cue-fallback":
        return CueCaptioner(frames_per_window=frames)
    if name == "qwen2.5-vl":
        if not qwen_path:
            raise ValueError("--captioner qwen2.5-vl needs --qwen_path (a local Qwen2.5-VL folder; nothing is "
                             "downloaded)")
        return QwenVLCaptioner(qwen_path, device=device, frames_per_window=frames, max_new_tokens=max_new_tokens,
                               dtype=dtype)
    raise ValueError(f"captioner must be one of {CAPTIONERS}, got {name!r}")


def utterances(splits: list[str], meld_dir: str = "", limit_dialogues: int = 0) -> list[MeldUtterance]:
    """The utterances to caption, in a fixed order (split, dialogue, utterance)."""
    out = []
    for split in splits:
        dias = dialogues(split, Path(meld_dir) if meld_dir else None)
        for d in sorted(dias)[:limit_dialogues or None]:
            out += dias[d]
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" -> (i, n), 0 <= i < n."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError(f"--shard must be i/n with 0 <= i < n, got {text!r}")
    return int(match[1]), int(match[2])


def check_and_read(video_dir: Path, u: MeldUtterance, frames: int, ident: str) -> tuple[dict, list | None]:
    """An utterance's record so far and its clip's frames, the clip opened once (``training.video.check_clip``):
    a clip that fails the manifest check or cannot be decoded gets its status and no frames."""
    from ddvlm_core.captioner import Frame
    from training.video import check_clip

    record = {"key": u.key, "captioner": ident}
    status, images = check_clip(video_dir, u, frames)
    if status.status != "ok":
        return {**record, "status": status.status, "detail": status.detail, "caption": ""}, None
    if status.detail:  # the test split's re-cut twin was used: which file, and why not the plain one
        record["detail"] = status.detail
    return record, [Frame(float(i), image) for i, image in enumerate(images)]


def captioned(record: dict, caption) -> dict:
    text = filter_emotion_words(caption.text).text  # the captioner filters too; what is stored is checked again
    return {**record, "status": "ok", "caption": text, "raw": caption.raw_text,
            "removed_words": list(caption.removed_words), "frames": caption.n_frames, "flags": list(caption.flags)}


def failed(record: dict, error: Exception) -> dict:
    return {**record, "status": "failed", "detail": error_text(error), "caption": ""}


def caption_clips(captioner, video_dir: Path, batch: list[MeldUtterance], ident: str) -> list[dict]:
    """The records of a batch of utterances: their clips checked and read, the readable ones captioned in one
    ``caption_batch`` call. A batch the captioner fails on is captioned clip by clip, so that only the clip at
    fault is recorded as failed; no exception leaves this function."""
    read = [check_and_read(video_dir, u, captioner.frames_per_window, ident) for u in batch]
    todo = [(record, frames) for record, frames in read if frames is not None]
    try:
        done = dict(zip((r["key"] for r, _ in todo), captioner.caption_batch([f for _, f in todo])))
    except Exception:  # noqa: BLE001 - e.g. out of memory on one long clip: try each on its own
        done = {}
        for record, frames in todo:
            try:
                done[record["key"]] = captioner.caption(frames)
            except Exception as e:  # noqa: BLE001 - one bad clip must not end a day-long run
                done[record["key"]] = e
    out = []
    for record, frames in read:
        result = done.get(record["key"])
        out.append(record if frames is None else failed(record, result) if isinstance(result, Exception)
                   else captioned(record, result))
    return out


def shard_file(out_dir: Path, ident: str, shard: tuple[int, int]) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.=@_-]+", "_", ident)
    return out_dir / f"{slug}.shard{shard[0]}of{shard[1]}.jsonl"


def caption_run(captioner, video_dir: str | Path, todo: list[MeldUtterance], out_dir: str | Path,
                shard: tuple[int, int] = (0, 1), max_new: int = 0, batch_size: int = 1, log=print) -> dict:
    """Caption this shard's utterances into its JSONL file, ``batch_size`` clips per captioner call, resuming
    after the ones it already holds (a record that failed is tried again); ``max_new`` > 0 stops after that many
    new records. Writes and returns the shard's manifest report: counts per status and every problem clip."""
    from tqdm import tqdm

    video_dir, out_dir = require_video_dir(video_dir, [u.split for u in todo]), Path(out_dir)
    ident = captioner_id(captioner)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = shard_file(out_dir, ident, shard)
    repair_partial_line(path)
    done = {k: r for k, r in read_captions(path).items() if r.get("status") != "failed"} if path.is_file() else {}
    mine = todo[shard[0]::shard[1]]
    pending = [u for u in mine if u.key not in done]
    log(f"captions {path.name}: {len(mine)} utterances in this shard, {len(mine) - len(pending)} done, "
        f"{min(len(pending), max_new or len(pending))} to caption now")
    if max_new:
        pending = pending[:max_new]
    step = max(1, batch_size)
    bar = tqdm(total=len(pending), desc=f"captions {shard[0]}/{shard[1]}", unit="clip", mininterval=10)
    with open(path, "a", encoding="utf-8") as fh:
        for start in range(0, len(pending), step):
            batch = pending[start:start + step]
            for record in caption_clips(captioner, video_dir, batch, ident):
                done[record["key"]] = record
                fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(batch))
    bar.close()
    report = manifest_summary([done[u.key] for u in mine if u.key in done], ident, len(mine))
    path.with_suffix(".manifest.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    log(f"captions {path.name}: " + ", ".join(f"{k} {v}" for k, v in report["counts"].items())
        + (f"; {len(report['problems'])} problem clips listed in {path.with_suffix('.manifest.json').name}"
           if report["problems"] else ""))
    return report


def manifest_summary(records: list[dict], ident: str, total: int) -> dict:
    """``training.video.manifest_report`` of a shard's records (ok, missing, unreadable, duration_mismatch,
    failed), with the utterances not captioned yet counted as not_done_yet."""
    from training.video import ClipStatus, manifest_report

    report = manifest_report([ClipStatus(r["key"], r["status"], r.get("detail", "")) for r in records])
    if total > len(records):
        report["counts"]["not_done_yet"] = total - len(records)
    return {"captioner": ident, "utterances": total, **report}


def require_video_dir(video_dir: str | Path, splits=None) -> Path:
    """``video_dir`` as a Path, when it holds the MELD.Raw folder of every split to caption (``splits``: those of
    the utterances given); FileNotFoundError naming what is missing otherwise."""
    from training.video import SPLIT_DIRS

    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise FileNotFoundError(f"--video_dir {video_dir}: no MELD.Raw folder here (train_splits/, "
                                "dev_splits_complete/, output_repeated_splits_test/)")
    absent = [f"{SPLIT_DIRS[s]}/ ({s})" for s in dict.fromkeys(splits or ())
              if not (video_dir / SPLIT_DIRS[s]).is_dir()]
    if absent:
        raise FileNotFoundError(f"--video_dir {video_dir}: no {', '.join(absent)}; every clip of that split would be "
                                "'missing' (caption the splits that are there with --splits)")
    return video_dir


def check_clips(video_dir: str | Path, todo: list[MeldUtterance], out_dir: str | Path, shard: tuple[int, int] = (0, 1),
                log=print) -> dict:
    """The manifest check alone, before a long captioning run: this shard's clips' statuses, counted, with every
    problem clip (``training.video.manifest_report``), written to ``out_dir/manifest.shard{i}of{n}.json``."""
    from tqdm import tqdm

    from training.video import manifest, manifest_report

    video_dir = require_video_dir(video_dir, [u.split for u in todo])
    mine = todo[shard[0]::shard[1]]
    clips = tqdm(mine, desc="manifest", unit="clip", mininterval=10)
    report = manifest_report([manifest(video_dir, [u])[0] for u in clips])
    path = Path(out_dir) / f"manifest.shard{shard[0]}of{shard[1]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    log(f"manifest of {len(mine)} clips: " + ", ".join(f"{k} {v}" for k, v in report["counts"].items())
        + f" -> {path}")
    return report


def count(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = "integer"  # argparse names the type in its message
    return parse


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.captions", description=__doc__.split("\n\n")[0])
    ap.add_argument("--video_dir", required=True, help="MELD.Raw: train_splits/, dev_splits_complete/, "
                    "output_repeated_splits_test/")
    ap.add_argument("--captioner", choices=CAPTIONERS, default="qwen2.5-vl",
                    help="qwen2.5-vl (the paper's annotator prompt) or cue-fallback (OpenCV cues, offline)")
    ap.add_argument("--qwen_path", default="", help="local Qwen2.5-VL folder (the paper's: Qwen2.5-VL-7B-Instruct)")
    ap.add_argument("--device", default="cpu", help="torch device of the captioner: cpu, cuda, cuda:1 ...")
    ap.add_argument("--dtype", default=None, help="Qwen2.5-VL weights' dtype, e.g. bfloat16 on a GPU")
    ap.add_argument("--frames", type=count(1), default=4, help="frames per clip (the emotion node's frames_per_window "
                    "default is 4: caption as the robot will)")
    ap.add_argument("--max_new_tokens", type=count(1), default=96, help="longest caption, in generated tokens")
    ap.add_argument("--batch_size", type=count(1), default=1,
                    help="clips per captioner call (Qwen2.5-VL on a GPU: e.g. 8)")
    ap.add_argument("--splits", default=",".join(SPLITS), help="comma-separated MELD splits")
    ap.add_argument("--meld_dir", default="", help="MELD CSVs (default: the repository's data/meld)")
    ap.add_argument("--limit_dialogues", type=count(0), default=0, help="first N dialogues per split (smoke runs)")
    ap.add_argument("--shard", default="0/1", help="i/n: this process captions every n-th utterance from the i-th")
    ap.add_argument("--max_new", type=count(0), default=0,
                    help="stop after N new captions (time-boxed runs; resumable)")
    ap.add_argument("--out", default="captions", help="folder of the JSONL shards (then --caption_source=<it>)")
    ap.add_argument("--check_only", action="store_true", help="only the manifest check of this shard's clips "
                    "(missing, unreadable, duration vs the CSV) -> <out>/manifest.shard{i}of{n}.json; no captioner")
    args = ap.parse_args(argv)
    try:
        shard = parse_shard(args.shard)
        splits = args.splits.split(",")
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown splits {sorted(unknown)}")
        todo = utterances(splits, args.meld_dir, args.limit_dialogues)
        if args.check_only:
            check_clips(args.video_dir, todo, args.out, shard)
            return 0
        captioner = make_captioner(args.captioner, args.qwen_path, args.device, args.frames, args.max_new_tokens,
                                   args.dtype)
        report = caption_run(captioner, args.video_dir, todo, args.out, shard, args.max_new, args.batch_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0 if "not_done_yet" not in report["counts"] else 3


# --- embeddings for training -------------------------------------------------------------------------------------

def captioner_of(records: dict[str, dict]) -> str:
    """The id of the captioner that wrote the records ("" for none; ``read_captions`` allows only one)."""
    return next(iter(records.values()), {}).get("captioner", "")


def caption_status(records: dict[str, dict], key: str) -> str:
    """How an utterance's clip fared: its record's status, or no_record for an utterance never captioned."""
    return records[key].get("status", "ok") if key in records else "no_record"


def usable_caption(records: dict[str, dict], key: str) -> str:
    """The caption an utterance is trained and scored with: its record's, emotion words filtered (again: a cache
    written before a word joined the filter), "" where its clip was not captioned."""
    return filter_emotion_words(records[key].get("caption", "")).text if caption_status(records, key) == "ok" else ""


def embed_captions(embedder, texts: list[str]) -> torch.Tensor:
    """(N, d) Sentence-BERT embeddings of ``texts``, zeros where a text is "" (no caption)."""
    out = torch.zeros((len(texts), embedder.dim))
    idx = [i for i, t in enumerate(texts) if t]
    if idx:
        out[idx] = embedder.embed([texts[i] for i in idx])
    return out


def caption_embeddings(cfg, data, log=print) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """Per split: (N, d) embeddings (zeros where no caption), an (N,) bool mask of captioned examples, and the
    report of the captions used (captioner id; per split the clips' statuses and every example whose clip was
    not captioned, which trains and is scored text-only)."""
    from ddvlm_core.visual import CaptionEmbedder

    records = read_captions(cfg.caption_source)
    embedder = CaptionEmbedder(resolve_model(cfg.caption_embedder), cfg.device)
    ident = captioner_of(records)
    emb, has, report = {}, {}, {"source": cfg.caption_source, "captioner": ident}
    for split, examples in data.items():
        statuses = [caption_status(records, e.key) for e in examples]
        texts = [usable_caption(records, e.key) for e in examples]
        digest = hashlib.sha256(json.dumps([cfg.caption_embedder, texts]).encode()).hexdigest()[:16]
        cache = Path(cfg.feature_cache) / f"captions-{split}-{digest}.safetensors"
        if cache.is_file():
            emb[split] = load_file(cache)["embedding"]
        else:
            emb[split] = embed_captions(embedder, texts)
            save_atomically({"embedding": emb[split].contiguous()}, cache)
        has[split] = torch.tensor([bool(t) for t in texts])
        counts = dict(Counter(statuses))
        problems = [{"key": e.key, "status": status} for e, status in zip(examples, statuses) if status != "ok"]
        report[split] = {"captioned": int(has[split].sum()), "examples": len(texts), "clips": counts,
                         "problems": problems}
        log(f"captions {split}: {int(has[split].sum())}/{len(texts)} examples have a usable caption ("
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; {ident or 'no captioner id'})")
    return emb, has, report


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

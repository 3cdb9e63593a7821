"""What the benches do alike: refuse a checkpoint path that is none before anything runs, read a list of MELD
splits, predict each distinct dialogue context once over several rows, say a paired WA-F1 difference in words, and
write a report as JSON and Markdown."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def refuse_non_checkpoint(ap: argparse.ArgumentParser, directory: str, option: str = "--model-dir") -> None:
    """Exit through ``ap.error`` when ``directory`` (given as ``option``) is not a ddvlm checkpoint: before any row
    runs, so that a wrong path never replaces a committed report with a table of failures."""
    from ddvlm_core.checkpoint import CheckpointError, read_manifest

    try:
        read_manifest(directory)
    except CheckpointError as e:
        ap.error(f"{option}: {e}")


def meld_splits(ap: argparse.ArgumentParser, text: str) -> list[str]:
    """The MELD splits of a comma-separated ``--splits``; exits through ``ap.error`` on anything else."""
    splits = [s.strip() for s in text.split(",") if s.strip()]
    if not splits or any(s not in ("train", "dev", "test") for s in splits):
        ap.error(f"--splits: MELD splits (train, dev, test), got {text!r}")
    return splits


def difference_words(paired: dict) -> str:
    """A ``ddvlm_core.metrics.bootstrap_wa_f1_difference`` in words."""
    from ddvlm_core.metrics import interval_words

    return (f"WA-F1 {paired['difference']:+.2f} ({interval_words(paired, 'dialogues')}; above 0 in "
            f"{100 * paired['share_above_0']:.1f} % of the resamples)")


def predict_new(recognizer, contexts: list, predicted: dict, desc: str) -> tuple[list[tuple], int]:
    """Each context's key (its turns' speaker tokens and texts), after predicting the contexts whose key is not in
    ``predicted`` yet (added to it: a context seen in an earlier row is not predicted again); and how many were."""
    keys = [tuple((t.speaker_token, t.text) for t in c) for c in contexts]
    new = list(dict.fromkeys(k for k in keys if k not in predicted))
    index = {k: i for i, k in enumerate(keys)}
    for key, prediction in zip(new, recognizer.predict_many([contexts[index[k]] for k in new], desc=desc)):
        predicted[key] = prediction
    return keys, len(new)


def write_report(report_dir: str, name: str, data: dict, markdown: str) -> None:
    """``name``.json (``data``) and ``name``.md (``markdown``) in ``report_dir``; the Markdown printed too."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)

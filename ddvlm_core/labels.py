"""The one label map of ddvlm: order, names and ids of MELD's seven emotions.

Every module (heads, losses, evaluation, messages) reads it from here. The order is MELD's own
(declare-lab/MELD baseline: neutral 0, surprise 1, fear 2, sadness 3, joy 4, disgust 5, anger 6),
which is also the order the paper lists them in (Section 4.1).
"""
LABELS: tuple[str, ...] = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
NUM_LABELS = len(LABELS)
LABEL_TO_ID: dict[str, int] = {name: i for i, name in enumerate(LABELS)}


def label_id(name: str) -> int:
    """Id of an emotion name (case and surrounding space ignored); ValueError for anything else."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in LABEL_TO_ID:
        raise ValueError(f"unknown emotion label {name!r}; expected one of {', '.join(LABELS)}")
    return LABEL_TO_ID[key]

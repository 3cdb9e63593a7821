from collections import Counter

import pytest

from ddvlm_core.labels import LABEL_TO_ID, LABELS, NUM_LABELS, label_id
from ddvlm_core.meld import read_split

# declare-lab/MELD baseline emotion map, index by index
MELD_EMOTION_IDS = {"neutral": 0, "surprise": 1, "fear": 2, "sadness": 3, "joy": 4, "disgust": 5, "anger": 6}


def test_label_map_matches_meld_index_by_index():
    assert NUM_LABELS == 7
    for name, index in MELD_EMOTION_IDS.items():
        assert LABELS[index] == name
        assert LABEL_TO_ID[name] == index


def test_meld_csvs_use_exactly_these_labels_with_the_documented_counts():
    counts = Counter(u.emotion for u in read_split("train"))
    assert set(counts) == set(LABELS)
    assert counts == {"neutral": 4710, "joy": 1743, "surprise": 1205, "anger": 1109,
                      "sadness": 683, "disgust": 271, "fear": 268}
    assert len(read_split("test")) == 2610 and len(read_split("dev")) == 1109


def test_label_id_normalises_and_rejects_unknown():
    assert label_id(" Joy ") == 4
    with pytest.raises(ValueError, match="unknown emotion label 'happy'"):
        label_id("happy")

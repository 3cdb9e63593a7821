"""training: MELD data, the one training loop (EMA self-distillation, CMKD, fusion), ablations, export."""

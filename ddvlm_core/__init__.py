"""ddvlm_core: the DDVLM model (text, visual, residual fusion), its losses, checkpoints and inference.

Pure PyTorch / transformers; never imports ROS. See README.md for the equations and readings.
"""
from ddvlm_core.labels import LABELS, NUM_LABELS, label_id

__all__ = ["LABELS", "NUM_LABELS", "label_id"]
__version__ = "0.1.0"

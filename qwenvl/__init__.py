"""qwenvl: a from-scratch PyTorch implementation of Qwen2.5-VL."""
from .api import VLM, load
from .batch import Batch
from .config import QwenVLConfig, preset

__version__ = "0.1.0"
__all__ = ["load", "VLM", "Batch", "QwenVLConfig", "preset", "__version__"]

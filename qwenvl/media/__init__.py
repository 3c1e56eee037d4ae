"""Media preprocessing: images and videos to the exact tensors the reference builds (reference.md §3, §4)."""
from .common import MediaError, smart_resize

__all__ = ["MediaError", "smart_resize"]

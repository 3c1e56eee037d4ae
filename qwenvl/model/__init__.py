from .qwenvl import QwenVL

__all__ = ["QwenVL"]

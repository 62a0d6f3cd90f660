"""Mirrors the released code's ``models/models.py``: ``models.ImplicitRegistrator``."""
from ..registrator import ImplicitRegistrator

__all__ = ["ImplicitRegistrator"]

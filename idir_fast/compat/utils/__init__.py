"""Mirrors the released code's ``utils`` package: ``from idir_fast.compat.utils import general``."""

"""Mirrors the released code's ``models`` package: ``from idir_fast.compat.models import models``."""

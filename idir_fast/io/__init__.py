"""Everything that touches files: images, atomic writes, landmarks, model files, data-set formats, figures.

* :mod:`.files` — atomic, checked, fsync'ed writes (:class:`~idir_fast.errors.OutputError`), output-prefix
  and folder checks, the output formats and names, the umask, the memory available.
* :mod:`.images` — reading and validating images (paths, SimpleITK images, NumPy arrays); writing them.
* :mod:`.landmarks` — point files (world mm or voxel indices).
* :mod:`.model_file` — the ``model.pt`` file (checked on load: structure, shapes, bounds, checksum).
* :mod:`.nifti` — what a NIfTI file declares and holds (truncation, NaN/Inf), checked before ITK reads it.
* :mod:`.outputs` — a run's outputs as one consistent set (run id, report with sizes and SHA-256, stale files).
* :mod:`.dirlab`, :mod:`.learn2reg` — data-set formats.
* :mod:`.figures` — PNG figures of a run (matplotlib).
"""
from ..errors import InputError  # noqa: F401  (``from idir_fast.io import InputError`` keeps working)
from .files import atomic_path, check_writable_prefix, write_json, write_text  # noqa: F401
from .images import ImageLike, as_image, as_mask, read_image, write_image  # noqa: F401

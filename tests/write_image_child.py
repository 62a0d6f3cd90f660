"""A child process for the kill tests: writes one image with :func:`idir_fast.io.images.write_image` (the caller
sets ``IDIR_FAST_TEST_PAUSE`` to hold it inside the write).

    python -m tests.write_image_child OUT.nii.gz VALUE
"""
import sys

import numpy as np
import SimpleITK as sitk

from idir_fast.io.images import write_image

if __name__ == "__main__":
    image = sitk.GetImageFromArray(np.full((40, 50, 60), float(sys.argv[2]), dtype=np.float32))
    write_image(image, sys.argv[1])

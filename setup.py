"""Build script: the Python package (``idir_fast`` and its subpackages, the Triton kernels in
``idir_fast/kernels``), the ``idir-fast`` command, and the optional compiled extension ``idir_fast._C`` from
``csrc/`` (fused trilinear sampling + NCC).

The extension is built with ``torch.utils.cpp_extension`` and ninja: with CUDA when torch has CUDA and nvcc is
found (or ``IDIR_FAST_FORCE_CUDA=1``), CPU-only otherwise. It needs torch at build time, so install with
``pip install --no-build-isolation``. If it cannot be built (no compiler, no torch), the package still installs
and falls back to the PyTorch implementation at run time with one warning. ``IDIR_FAST_NO_EXTENSION=1`` skips it.
"""
import os
import re
import sys
import warnings

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext as _build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    with open(os.path.join(HERE, "idir_fast", "version.py")) as fh:
        return re.search(r'__version__ = "([^"]+)"', fh.read()).group(1)


def _skip(reason):
    warnings.warn(f"idir_fast: not building the compiled extension ({reason}); the PyTorch fallback will be used")
    print(f"idir_fast: not building the compiled extension ({reason})", file=sys.stderr)
    return [], {}


def nvcc_arch_flags(archs):
    """Cubins for each listed architecture, plus PTX of the newest one so GPUs newer than the list JIT-compile it
    instead of failing with "no kernel image is available"."""
    archs = [a.strip() for a in archs if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    if archs:
        newest = max(archs, key=lambda a: int("".join(ch for ch in a if ch.isdigit())))
        flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def _extensions():
    if os.environ.get("IDIR_FAST_NO_EXTENSION") == "1":
        return _skip("IDIR_FAST_NO_EXTENSION=1")
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except Exception as err:  # noqa: BLE001 — torch missing in an isolated build environment
        return _skip(f"torch is not importable at build time: {err}; use pip install --no-build-isolation")

    csrc = "csrc"
    sources = [f"{csrc}/bindings.cpp", f"{csrc}/sample_ncc_cpu.cpp", f"{csrc}/sine_streams_cpu.cpp",
               f"{csrc}/local_ncc_cpu.cpp"]
    cxx = ["-O3", "-fopenmp"]  # the C++ standard is the one torch asks for
    with_cuda = os.environ.get("IDIR_FAST_FORCE_CUDA") == "1" or (torch.version.cuda is not None
                                                                   and CUDA_HOME is not None)
    if torch.version.cuda is not None and not with_cuda:
        message = ("idir_fast: this torch has CUDA but no CUDA toolkit (nvcc) was found: the compiled sampling/NCC "
                   "op is built for the CPU only and GPU runs will use the slower PyTorch path. Put nvcc on PATH "
                   "or set CUDA_HOME and reinstall to build the CUDA kernels.")
        warnings.warn(message)
        print(message, file=sys.stderr)
    if with_cuda:
        nvcc = ["-O3"] + nvcc_arch_flags(os.environ.get("IDIR_FAST_CUDA_ARCHS", "80;90").split(";"))
        ext = CUDAExtension("idir_fast._C", sources + [f"{csrc}/sample_ncc_cuda.cpp", f"{csrc}/sample_ncc.cu",
                                                      f"{csrc}/local_ncc_cuda.cpp", f"{csrc}/local_ncc.cu"],
                            define_macros=[("WITH_CUDA", None)],
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("idir_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])

    base = BuildExtension.with_options(use_ninja=True)

    class OptionalBuildExt(base):
        """Build the extension, but let the pure-Python package install if that fails."""

        def run(self):
            try:
                super().run()
            except Exception as err:  # noqa: BLE001
                _skip(f"build failed: {err}")

        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except Exception as err:  # noqa: BLE001
                _skip(f"build failed: {err}")

    return [ext], {"build_ext": OptionalBuildExt}


def _setup(ext_modules, cmdclass):
    setup(
        name="idir-fast",
        version=_version(),
        description="Fast implicit-neural-representation deformable image registration (IDIR) with fused kernels",
        long_description=open(os.path.join(HERE, "README.md")).read(),
        long_description_content_type="text/markdown",
        python_requires=">=3.9",
        packages=find_packages(include=["idir_fast", "idir_fast.*"]),
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        install_requires=[
            "torch>=2.4",
            "numpy>=1.23",
            "SimpleITK>=2.2",
            "tqdm>=4.60",
            "matplotlib>=3.5",
            # ISA-L's gzip for the .nii.gz outputs (zlib's deflate was most of the time of writing an output set)
            "isal>=1.0",
        ],
        extras_require={
            "test": ["pytest>=7", "pytest-benchmark>=4"],
            "ray": ["ray>=2.9"],
            # the Triton kernels (GPU; their interpreter tests run on a CPU). CUDA builds of torch bring triton.
            "gpu": ["triton>=3.0; platform_system == 'Linux'"],
            # the peers benchmark (python -m benchmarks.peers): ANTs SyN and elastix on the same pairs; nilearn
            # for the ICBM152 template of the brain cases (FireANTs: pip install --no-deps fireants)
            "peers": ["antspyx>=0.4", "itk-elastix>=0.20", "nilearn>=0.10"],
        },
        entry_points={"console_scripts": ["idir-fast=idir_fast.apps.cli:main"]},
        zip_safe=False,
    )


if not globals().get("IDIR_FAST_SETUP_IMPORT_ONLY"):  # tests read the helpers above without building
    _setup(*_extensions())


"""Build script: the Python package, ``kernels/`` installed as ``idir_fast.kernels``, the ``idir-fast`` command."""
import os
import re

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    with open(os.path.join(HERE, "idir_fast", "__init__.py")) as fh:
        return re.search(r'__version__ = "([^"]+)"', fh.read()).group(1)


setup(
    name="idir-fast",
    version=_version(),
    description="Fast implicit-neural-representation deformable image registration (IDIR) with fused kernels",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.exists(os.path.join(HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["idir_fast", "idir_fast.backends", "idir_fast.kernels"],
    package_dir={"idir_fast": "idir_fast", "idir_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "numpy>=1.23",
        "SimpleITK>=2.2",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "triton>=3.0; platform_system == 'Linux'",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4"],
        "ray": ["ray>=2.9"],
    },
    entry_points={"console_scripts": ["idir-fast=idir_fast.cli:main"]},
)

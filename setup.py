"""Build the C++ tokenizer core (csrc/) into the private extension ``lmfast._bpe``.

Everything else about the package lives in pyproject.toml.
"""

import glob
import os
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

_HERE = os.path.dirname(os.path.abspath(__file__))


def _native_extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources:
        return []
    extra_compile_args = ["-O3"]
    extra_link_args = []
    if sys.platform != "win32":
        extra_compile_args += ["-pthread", "-fvisibility=hidden"]
        extra_link_args += ["-pthread"]
    return [
        Pybind11Extension(
            "lmfast._bpe",
            sources,
            include_dirs=[os.path.join(_HERE, "csrc")],
            cxx_std=17,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


setup(ext_modules=_native_extensions(), cmdclass={"build_ext": build_ext})

"""Build the C++ tokenizer core (csrc/) into the private extension ``lmfast.tokenizer._bpe``, and put the Triton
kernels of the top-level ``kernels/`` folder into the wheel as ``lmfast.kernels`` (see lmfast/kernels/__init__.py
for why the folder is not a package of its own).

Everything else about the package lives in pyproject.toml.
"""

import glob
import os
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup
from setuptools.command.build_py import build_py

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
            "lmfast.tokenizer._bpe",
            sources,
            include_dirs=[os.path.join(_HERE, "csrc")],
            cxx_std=17,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


class build_py_with_kernels(build_py):  # noqa: N801 (setuptools' command naming)
    """build_py, plus kernels/*.py copied into lmfast/kernels/ (an editable install reads them in place instead)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = os.path.join(self.build_lib, "lmfast", "kernels")
        self.mkpath(target)
        for source in sorted(glob.glob(os.path.join(_HERE, "kernels", "*.py"))):
            self.copy_file(source, os.path.join(target, os.path.basename(source)))


setup(ext_modules=_native_extensions(), cmdclass={"build_ext": build_ext, "build_py": build_py_with_kernels})

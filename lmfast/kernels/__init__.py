"""Triton kernels of lmfast, ``lmfast.kernels``: one op per module.

The sources live in the repository's top-level ``kernels/`` folder. That folder has no ``__init__.py`` on purpose:
``kernels`` is the name of Hugging Face's package (transformers requires it), and from the repository root, where
the current directory comes first on ``sys.path``, a regular package there would shadow it. So the folder is never
importable as ``kernels``; it is reached only as ``lmfast.kernels``:

- installed (a wheel), ``setup.py`` copies ``kernels/*.py`` into this package, next to this file;
- in the source tree (an editable install, or an uninstalled copy run from the repository root), this package's
  ``__path__`` also names ``../../kernels``, so ``lmfast.kernels.attention`` is ``kernels/attention.py``.

Importing this package imports nothing heavy; each op module imports Triton when it is itself imported.
The plain-PyTorch reference of every kernel lives in ``lmfast.model.functional`` / ``lmfast.train.optim``.
"""

from pathlib import Path

_HERE = Path(__file__).resolve().parent
_SOURCES = _HERE.parent.parent / "kernels"
# Only a source tree: in a wheel the modules sit beside this file, and whatever folder happens to be two levels up
# (site-packages' parent) must not be searched.
if not (_HERE / "attention.py").exists() and (_SOURCES / "attention.py").exists():
    __path__.append(str(_SOURCES))  # noqa: F821 (the package's own __path__)

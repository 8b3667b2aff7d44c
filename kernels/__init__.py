"""Triton kernels of lmfast, installed as ``lmfast.kernels``: one op per module.

Importing this package imports nothing heavy; each op module imports Triton when it is itself imported.
The plain-PyTorch reference of every kernel lives in ``lmfast.functional`` / ``lmfast.optim``.
"""

"""``lmfast.checkpoint`` is :mod:`lmfast.train.checkpoint`, under the path of DESIGN.md's public API.

The two names are one module object, so attributes set on either (a test's monkeypatch) are seen by both.
"""

import sys

from lmfast.train import checkpoint

sys.modules[__name__] = checkpoint

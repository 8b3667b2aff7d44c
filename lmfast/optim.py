"""``lmfast.optim`` is :mod:`lmfast.train.optim`, under the path of DESIGN.md's public API.

The two names are one module object, so attributes set on either (a test's monkeypatch) are seen by both.
"""

import sys

from lmfast.train import optim

sys.modules[__name__] = optim

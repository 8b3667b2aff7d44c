"""``lmfast.functional`` is :mod:`lmfast.model.functional`, under the path of DESIGN.md's public API.

The two names are one module object, so attributes set on either (a test's monkeypatch) are seen by both.
"""

import sys

from lmfast.model import functional

sys.modules[__name__] = functional

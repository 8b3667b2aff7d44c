"""``python -m lmfast.train --config X.yaml``: see :func:`lmfast.train.trainer.main`."""

import sys

from lmfast.train.trainer import main

sys.exit(main())

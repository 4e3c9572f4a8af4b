"""``python -m famlab.cli``: the ``famlab`` command (sweep workers start their trials this way)."""

import sys

from famlab.cli import main

sys.exit(main())

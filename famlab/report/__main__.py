"""``python -m famlab.report`` (the same as ``famlab report``)."""

import sys

from famlab.report import main

sys.exit(main())

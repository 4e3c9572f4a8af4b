"""``python -m famlab.sweep ...`` = ``famlab sweep ...`` (how ``run --workers N`` and SLURM start workers)."""

import sys

from famlab.sweep.command import main

sys.exit(main())

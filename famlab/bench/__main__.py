"""``python -m famlab.bench``: the training-step benchmark (``famlab.bench.train_step``)."""

from famlab.bench.train_step import main

main()

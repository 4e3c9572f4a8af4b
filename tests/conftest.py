from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def postgres():
    from pg import PostgresServer

    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """The text corpus, fetched once per session into a temporary cache."""
    from famlab.data import fetch

    path = tmp_path_factory.mktemp("famlab_cache")
    fetch(str(path))
    return str(path)

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def postgres():
    from pg import PostgresServer

    server = PostgresServer()
    yield server
    server.stop()

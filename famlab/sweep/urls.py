"""Storage URLs given by the user (``--storage``, ``$FAMLAB_STORAGE``): normalised, and checked once before a
sweep, a worker, its status or the claims open them, so an unusable one is a single line (exit 2) instead of
SQLAlchemy's or Optuna's traceback. Nothing here prints a password (:func:`famlab.sweep.spec.redact`).

* ``postgresql://`` without a driver is ``postgresql+psycopg2://``: SQLAlchemy 2.1 maps the bare scheme to
  psycopg 3, which famlab does not install (psycopg2-binary is its PostgreSQL driver).
* A SQLite URL needs a file path (``sqlite:///PATH``: an in-memory store is lost with its process, and no two
  workers share it); the path is not a folder, its parent is not a file, an existing file is a database.
* ``journal:PATH`` is a journal file (:mod:`famlab.sweep.journal`): the path is not a folder, its nearest
  existing parent is a folder; a missing file is usable (a sweep makes it, ``status`` says there are no trials).
* Any other URL must name an installed SQLAlchemy dialect and driver and accept a connection.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from famlab.sweep.spec import redact

JOURNAL_PREFIX = "journal:"  # as famlab.sweep.journal (not imported here: this module stays free of Optuna)

DRIVERLESS = {"postgresql": "postgresql+psycopg2", "postgres": "postgresql+psycopg2"}


def normalize_storage(url: str) -> str:
    """``postgresql://...`` -> ``postgresql+psycopg2://...``; every other URL unchanged."""
    scheme, sep, rest = url.partition("://")
    return f"{DRIVERLESS[scheme]}://{rest}" if sep and scheme in DRIVERLESS else url


def _why(err: BaseException, url: str) -> str:
    """An exception as one line, with the URL's password (if any) masked."""
    text = " ".join(str(getattr(err, "orig", None) or err).split("\n")[0].split()) or type(err).__name__
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        password = make_url(url).password
        if password:
            text = text.replace(str(password), "***")
    return text


def storage_problem(url: str, *, connect: bool = True) -> str | None:
    """None when ``url`` is a usable Optuna storage, else one line saying why (the password masked).
    A SQLite file that does not exist yet is usable (a sweep makes it); nothing is created here."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    shown = redact(url)
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url.removeprefix(JOURNAL_PREFIX)).expanduser()
        if not url.removeprefix(JOURNAL_PREFIX):
            return f"--storage {shown}: a journal store needs a file path (journal:PATH)"
        if path.is_dir():
            return f"--storage {shown}: {str(path)!r} is a folder, not a journal file"
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            return f"--storage {shown}: {str(parent)!r} is a file, not a folder"
        return None
    try:
        parsed = make_url(url)
    except Exception:
        return f"--storage {shown}: not a storage URL (expected sqlite:///PATH or postgresql+psycopg2://USER@HOST/DB)"
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            return f"--storage {shown}: a SQLite store needs a file path (sqlite:///PATH)"
        path = Path(parsed.database)
        if path.is_dir():
            return f"--storage {shown}: {str(path)!r} is a folder, not a SQLite file"
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            return f"--storage {shown}: {str(parent)!r} is a file, not a folder"
        if not path.exists():
            return None
    postgres = parsed.get_backend_name() == "postgresql"
    try:
        engine = create_engine(url, **({"connect_args": {"connect_timeout": 10}} if postgres else {}))
    except Exception as e:  # an unknown dialect or a driver that is not installed
        return f"--storage {shown}: unusable URL: {type(e).__name__}: {_why(e, url)}"
    if not connect:
        engine.dispose()
        return None
    try:
        with engine.connect() as conn:
            if parsed.get_backend_name() == "sqlite":  # reads the header: a file that is not a database fails
                conn.execute(text("SELECT count(*) FROM sqlite_master")).scalar()
    except Exception as e:
        return f"--storage {shown}: cannot open the store: {_why(e, url)}"
    finally:
        engine.dispose()
    return None

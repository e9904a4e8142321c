"""The ``speakerdb`` command line: a thin click layer over the library.

Each command parses its arguments, calls the library, and prints text or (``--json``) one
JSON document on stdout. Exit status, like grep: 0 accepted / same speaker / known speaker,
1 rejected / different / unknown, 2 any error. Errors are one line, ``error: ...``, on stderr
(``--debug`` shows the traceback). Heavy modules (torch, SQLAlchemy) are imported only by the
commands that need them, so ``speakerdb --help`` starts quickly.
"""

from speakerdb.cli._app import cli, main

__all__ = ["cli", "main"]

"""Two separately configured Django projects, ``shop`` and ``warehouse``, sharing one
database: each runs as subprocesses with its own settings and its own handler registry."""

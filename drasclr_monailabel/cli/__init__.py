"""The ``drasclr`` command line: one module ``cmd_<name>.py`` per subcommand.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``
and imports heavy libraries (torch, SimpleITK) inside ``run`` so that ``drasclr --help`` is fast.
"""

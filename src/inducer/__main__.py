"""``python -m inducer``: the command-line interface (see ``inducer --help``)."""

from .launch import main

main()

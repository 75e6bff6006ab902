"""``python -m inducer``: the command-line interface (see ``inducer --help``)."""

from .cli.launch import main

main()

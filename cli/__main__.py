"""``python -m cli``: the same as the ``kvctl`` console script."""

from cli.main import main

main()

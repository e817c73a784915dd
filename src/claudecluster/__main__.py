"""``python -m claudecluster``: the same command line as the console script."""

from claudecluster.cli import main

main()

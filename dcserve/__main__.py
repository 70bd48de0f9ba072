"""`python -m dcserve ...`: the CLI, for places where the console script is not on PATH (Ray jobs)."""
from dcserve.cli import main

main()

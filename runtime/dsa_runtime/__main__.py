"""`python -m dsa_runtime`."""

from dsa_runtime.cli import main

main()

"""`python -m micro.cli ...` (what torchrun runs)."""

from . import main

main()

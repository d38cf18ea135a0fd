"""`python -m tunefm`: the `tunefm` command where its script is not installed (an offline bundle)."""

from tunefm.cli import main

main(prog_name="tunefm")

"""`python -m minirun.cli ...`: the module path torchrun launches (a Ctrl-C while torch imports: one line)."""
from minirun.cli import main

main()

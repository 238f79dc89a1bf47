"""`python -m minirun.cli ...`: the module path torchrun launches."""
from minirun.cli.commands import app

app()

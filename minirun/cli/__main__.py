"""`python -m minirun.cli ...`: the module path torchrun launches."""
from minirun.cli.app import app

app()

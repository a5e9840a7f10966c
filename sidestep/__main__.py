"""`python -m sidestep`: the command line."""

from sidestep.cli import app

app(prog_name="sidestep")

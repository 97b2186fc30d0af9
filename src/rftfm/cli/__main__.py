"""``python -m rftfm.cli``: the same app as the ``rftfm`` script."""

from rftfm.cli.main import app

app()

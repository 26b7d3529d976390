"""One module per command-line sub-command (see :mod:`analysis.cli.main`)."""

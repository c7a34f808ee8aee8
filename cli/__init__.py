"""Command-line tools: ``omgmg-data`` (datasets, cli/data.py) and ``omgmg`` (training, cli/train.py).

Both are thin layers over library calls; every command is tested through click's CliRunner.
"""

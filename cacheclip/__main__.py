"""`python -m cacheclip ...` (e.g. under torchrun) == the `cacheclip` command."""

from cacheclip.cli.main import main

main()

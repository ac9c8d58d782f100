"""`python -m cacheclip ...` (e.g. under torchrun) == the `cacheclip` command."""

from cli.main import main

main()

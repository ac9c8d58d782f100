"""`python -m cli` == the `cacheclip` command."""

from cacheclip.cli.main import main

main()

"""`python -m cli` == the `cacheclip` command."""

from .main import main

main()

"""`python -m slimtune.cli`: the `slimtune` command."""

from slimtune.cli import main

if __name__ == "__main__":
    main()

"""`python -m histoldm` runs the same command line as the `histoldm` script."""

from histoldm.cli import main

if __name__ == "__main__":
    main()

"""``python -m speakerdb``: the command line."""

from speakerdb.cli import main

if __name__ == "__main__":
    main()

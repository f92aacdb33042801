import sys

from server.cli import main

# Guarded: Sanic's worker processes are spawned, and import this module again.
if __name__ == "__main__":
    sys.exit(main())

"""``python -m portnn``: the same as the ``portnn`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m kgen``: the ``kgen`` command."""

from kgen.cli import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="kgen")

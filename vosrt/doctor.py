"""``python -m vosrt.doctor``: ``vosrt doctor`` without the console script (see :mod:`vosrt.cli.doctor`)."""
from vosrt.cli.doctor import run

if __name__ == "__main__":
    run()

#!/usr/bin/env python
"""Entry point of the benchmark; all logic lives in the ``bench`` package (see ``--help``)."""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())

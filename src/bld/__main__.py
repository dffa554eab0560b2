"""`python -m bld ...` is the `bld` command."""

import sys

from .apps.cli import main

sys.exit(main())

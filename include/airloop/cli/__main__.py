"""``python -m airloop.cli``: the ``airloop`` command line."""

import sys

from airloop.cli.main import main

sys.exit(main())

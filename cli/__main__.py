"""``python -m skullsearch.cli``: the same as the ``skullsearch`` command."""

import sys

from skullsearch.cli.app import main

sys.exit(main())

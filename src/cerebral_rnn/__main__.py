"""``python -m cerebral_rnn`` runs the ``cerebral-rnn`` command line."""

import sys

from cerebral_rnn.cli import main

sys.exit(main())

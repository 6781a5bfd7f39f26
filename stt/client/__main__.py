"""`python -m stt.client …`: see stt/client/cli.py."""

import sys

from stt.client.cli import main

sys.exit(main())

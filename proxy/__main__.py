"""`python -m proxy`, the same as the `sigv4-proxy` command."""

import sys

from proxy.cli import main

sys.exit(main())

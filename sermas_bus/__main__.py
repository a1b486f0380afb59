"""``python -m sermas_bus``: see sermas_bus.cli."""
import sys

from .cli import main

sys.exit(main())

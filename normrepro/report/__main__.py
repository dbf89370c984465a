"""``python -m normrepro.report``."""
import sys

from normrepro.report.cli import main

sys.exit(main())

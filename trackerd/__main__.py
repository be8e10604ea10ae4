"""``python -m trackerd``."""

import sys

from trackerd.main import main

sys.exit(main())

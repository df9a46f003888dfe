"""`python -m mme_jd.bench`: see `mme_jd.bench`."""

import sys

from .run import main

sys.exit(main())

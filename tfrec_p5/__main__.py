"""``python -m tfrec_p5 ...`` is the same as the ``tfrec-p5`` command."""

import sys

from tfrec_p5.cli import main

sys.exit(main())

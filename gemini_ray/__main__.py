"""`python -m gemini_ray` is `gemini-ray`."""

import sys

from gemini_ray.cli import main

sys.exit(main())

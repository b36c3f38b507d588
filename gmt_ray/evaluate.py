"""python -m gmt_ray.evaluate: the evaluation CLI, which lives in ``gmt_ray.eval.cli``."""

import sys

from gmt_ray.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())

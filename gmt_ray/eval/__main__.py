"""python -m gmt_ray.eval: the same as python -m gmt_ray.evaluate."""

import sys

from gmt_ray.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())

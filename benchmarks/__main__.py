"""`python -m benchmarks [ops|train|all] [--only NAME] [--quick] [--out DIR] [--smoke]`."""
import sys

from .cli import main

sys.exit(main())

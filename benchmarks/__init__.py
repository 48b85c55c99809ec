"""fusegan benchmarks: fused ops (and later whole training steps) against eager PyTorch and torch.compile.

Not an installed package: run it from the source checkout with `python -m benchmarks` (or `fusegan bench`).
Each `ops_*.py` / `train_*.py` module exposes a `CASES` list that `registry.discover` collects, so a new
op family is one new file. See benchmarks/README.md.
"""

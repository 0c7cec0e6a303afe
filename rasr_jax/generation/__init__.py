"""Generation: the jitted draft-critique-refine loop (generate.py) and the host side that loads a
checkpoint and serves `--mode=generate` / `--mode=score` (inference.py)."""

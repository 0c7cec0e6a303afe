"""Training: state, optimizer groups, pure losses, the reflection scan, the jitted step, the
loop (setup, then steps), checkpoints, metrics, FLOPs and fault injection from outside."""

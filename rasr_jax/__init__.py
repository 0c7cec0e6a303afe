"""rasr_jax: JAX/Flax pretraining with Recursive Alignment via Self-Reflection."""

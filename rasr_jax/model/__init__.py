"""The Llama-style trunk: imports nothing from training, data or evaluation."""

"""Command-line modes beside train / generate / score / eval: `describe` and `compile`."""

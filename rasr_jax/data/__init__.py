"""Tokenizer, document sources and the grain input pipeline."""

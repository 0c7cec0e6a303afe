"""Safety dimensions of UFARSAP (seed 003): programmatic labels of texts."""

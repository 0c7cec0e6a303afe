"""The RASR loop's one home, shared by the training scan and the generation loop: the
refine-sequence layout and marker ids (layout.py), the typed loop state (state.py), the
critique / decide / refine steps (steps.py) and the TrueQuality oracles (quality.py)."""

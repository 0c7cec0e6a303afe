"""Post-training on the pretraining step: supervised fine-tuning (SFT) and preference
optimisation (DPO) of records in the chat layout (data/chat.py)."""

"""Preprocessing, sliding-window inference, training, fine-tuning, checkpoints (no Qt)."""

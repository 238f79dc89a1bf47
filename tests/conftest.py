"""Shared fixtures: small random-weight checkpoints and the real default model."""

"""diffrl: distributed RL post-training for diffusion and flow-matching models."""

__version__ = "0.1.0"

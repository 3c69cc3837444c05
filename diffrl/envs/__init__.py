"""Environments: procedural worlds (prompts, renders, ground truth) that models, rewards and jobs share."""

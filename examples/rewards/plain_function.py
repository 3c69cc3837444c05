"""A reward written as a plain function, with no factory: `{name: "examples/rewards/plain_function.py:redness"}`.

diffrl tells it from a factory by its signature: its first three parameters (images, prompts, metadata) are positional
and have no defaults, so it is used as it is (and takes no kwargs). It returns a `(scores, details)` tuple, as
Flow-GRPO's rewards do; the scores alone (a list, numpy array or torch tensor) or a RewardOutput work too.
"""

import numpy as np


def redness(images, prompts, metadata):
    """The mean of the red channel minus the mean of the others, in [-1, 1], per image."""
    pixels = images.astype(np.float64) / 255.0
    red = pixels[..., 0].mean(axis=(1, 2))
    rest = pixels[..., 1:].mean(axis=(1, 2, 3))
    return red - rest, {"red": red.tolist()}

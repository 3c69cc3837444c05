"""Flow-GRPO's OCR reward with rapidocr-onnxruntime on text rendered with PIL (models ship inside the wheel)."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from diffrl.rewards.ocr import ocr_reward_value, ocr_target

pytest.importorskip("rapidocr_onnxruntime")


def render(text: str) -> np.ndarray:
    image = Image.new("RGB", (512, 128), "white")
    draw = ImageDraw.Draw(image)
    draw.text((20, 30), text, fill="black", font=ImageFont.load_default(size=56))
    return np.asarray(image)


@pytest.fixture(scope="module")
def reward():
    from diffrl.rewards.builtin import ocr

    return ocr()


def test_target_and_formula():
    assert ocr_target('A sign that says "Hello World" in neon') == "Hello World"
    with pytest.raises(ValueError, match="no target text between double quotes"):
        ocr_target("a photo of a cat")
    assert ocr_reward_value("xx HELLO world yy", "hello world") == 1.0  # substring after normalization
    assert ocr_reward_value("helo world", "hello world") == pytest.approx(1 - 1 / 10)
    assert ocr_reward_value("", "hello") == 0.0
    assert ocr_reward_value("completely different", "abc") == 0.0  # distance capped at len(target)


def test_rendered_text_exact_misspelled_and_blank(reward):
    images = np.stack([render("DIFFUSION"), render("DIFUSION"), np.full((128, 512, 3), 255, np.uint8)])
    prompts = ['A sign that says "DIFFUSION"'] * 3
    out = reward(images, prompts, [{}] * 3)
    assert out.details["text"][0].replace(" ", "").lower() == "diffusion"
    assert out.scores[0] == 1.0
    assert out.scores[1] == pytest.approx(1 - 1 / 9)  # one deletion in a 9-letter target
    assert out.scores[2] == 0.0

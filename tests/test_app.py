"""The web UI's generate handler, called directly as a plain function."""

import gradio as gr
import pytest
from PIL import Image

from app import TextToImage, build_demo
from studio.settings import load_settings


def test_handler_generates_and_reuses_the_pipeline(tiny_env):
    handler = TextToImage(load_settings())
    first = handler("tiny", "a portrait", "", 5, 1)
    pipe = handler._pipes["tiny"]
    second = handler("tiny", "a portrait", "", 5, 1)
    assert handler._pipes["tiny"] is pipe
    assert len(first) == 1 and Image.open(first[0]).text["parameters"].startswith("a portrait")
    assert first != second and Image.open(first[0]).tobytes() == Image.open(second[0]).tobytes()


def test_handler_turns_user_mistakes_into_gr_error(tiny_env):
    handler = TextToImage(load_settings())
    with pytest.raises(gr.Error, match="--prompt is empty"):
        handler("tiny", "", "", 0, 1)
    with pytest.raises(gr.Error, match="neither a model set"):
        handler("no-such-set", "x", "", 0, 1)


def test_build_demo_makes_blocks(tiny_env):
    assert isinstance(build_demo(load_settings()), gr.Blocks)

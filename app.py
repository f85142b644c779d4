"""Portrait Studio web UI: ``python app.py [--port P] [--models SET] [--listen]``.

Today it offers text-to-image on a model set; the profile, training and identity tabs arrive
with the studio issue. The UI is built by :func:`build_demo`; handlers are plain functions.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import gradio as gr

from studio import generate
from studio.errors import StudioError
from studio.models import select_model_set
from studio.settings import Settings, load_settings


class TextToImage:
    """Loads each model set's pipeline once, on first use, and reuses it across requests."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pipes: dict[str, object] = {}
        self._lock = threading.Lock()

    def __call__(
        self, models: str, prompt: str, negative: str, seed: float, steps: float
    ) -> list[str]:
        request = generate.GenerationRequest(
            prompt=prompt, negative_prompt=negative, seed=int(seed), steps=int(steps)
        )
        try:
            request.validate()
            model_set = select_model_set(models)
            with self._lock:
                if models not in self._pipes:
                    self._pipes = {models: generate.load_pipeline(model_set, self.settings)}
                paths = generate.run(
                    self._pipes[models], model_set, request, self.settings.output_dir
                )
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return [str(p) for p in paths]


def build_demo(settings: Settings, models: str = "tiny") -> gr.Blocks:
    handler = TextToImage(settings)
    with gr.Blocks(title="Portrait Studio") as demo:
        gr.Markdown("# Portrait Studio")
        if models.startswith("tiny"):
            gr.Markdown(
                "Running on the **tiny** random-weight model set: it proves the mechanics, not "
                "image quality. Real sets need their weights: `python -m studio models list`."
            )
        with gr.Row():
            with gr.Column():
                model_box = gr.Textbox(value=models, label="Model set")
                prompt = gr.Textbox(label="Prompt", value="a studio portrait photo of a person")
                negative = gr.Textbox(label="Negative prompt")
                seed = gr.Number(value=0, precision=0, label="Seed")
                steps = gr.Slider(
                    1, 60, value=4 if models.startswith("tiny") else 30, step=1, label="Steps"
                )
                button = gr.Button("Generate", variant="primary")
            gallery = gr.Gallery(label="Results")
        button.click(
            handler,
            [model_box, prompt, negative, seed, steps],
            gallery,
            concurrency_id="gpu",
            concurrency_limit=1,
        )
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--listen", action="store_true", help="bind 0.0.0.0 instead of 127.0.0.1")
    args = parser.parse_args()
    settings = load_settings()
    demo = build_demo(settings, args.models)
    demo.launch(
        server_name="0.0.0.0" if args.listen else "127.0.0.1",
        server_port=args.port,
        allowed_paths=[str(Path(settings.output_dir))],
    )


if __name__ == "__main__":
    main()

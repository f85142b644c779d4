"""Identity LoRA training: photos → head crops → cached latents → peft LoRA → exported weights.

``python -m studio.train_lora`` (or ``python -m studio train-lora``) is the command; the stages
live in small modules: :mod:`.photos` (selection and crops), :mod:`.augment`, :mod:`.model`
(components and LoRA layers), :mod:`.cache` (latents and text embeddings), :mod:`.trainer` (the
loop, checkpoints, resume), :mod:`.validation` (identity scoring), :mod:`.export` (diffusers and
kohya files) and :mod:`.report`.
"""

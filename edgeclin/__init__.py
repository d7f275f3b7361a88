"""edgeclin: fine-tune small clinical encoders with LoRA and deploy them on CPUs.

    import edgeclin
    result = edgeclin.train(data="notes/", method="lora", max_length=256)
"""

from importlib import import_module

from edgeclin.errors import EdgeclinError

__all__ = ["EdgeclinError", "TrainConfig", "train"]


def __getattr__(name: str):
    # torch and transformers load only when training is asked for, so that light
    # commands (and the torch-free runtime) stay light
    if name in ("train", "TrainConfig"):
        return getattr(import_module("edgeclin.training"), name)
    raise AttributeError(name)

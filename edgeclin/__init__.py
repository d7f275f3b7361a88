"""edgeclin: fine-tune small clinical encoders with LoRA and deploy them on CPUs."""

from edgeclin.errors import EdgeclinError

__all__ = ["EdgeclinError", "TrainConfig", "train"]


def __getattr__(name: str):
    # torch and transformers load only when training is asked for, so that light
    # commands (and, later, the torch-free runtime) stay light
    if name in ("train", "TrainConfig"):
        from edgeclin import train as train_module

        return getattr(train_module, name)
    raise AttributeError(name)

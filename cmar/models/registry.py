"""Named registries of interchangeable parts: a dict with a decorator, not an if/elif chain.

    from cmar.models import FUSIONS

    @FUSIONS.register("my_fusion")
    class MyFusion(nn.Module): ...

and ``model.fusion: my_fusion`` in a config builds it.
"""

from __future__ import annotations

from collections.abc import Callable


class Registry(dict):
    """name -> class. ``build(name, **kwargs)`` instantiates; unknown names list the choices."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[type], type]:
        def add(cls: type) -> type:
            if name in self:
                raise KeyError(f"{self.kind} {name!r} is already registered ({self[name]})")
            self[name] = cls
            return cls

        return add

    def build(self, name: str, **kwargs):
        if name not in self:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self)}. A part "
                           "of your own is registered when the file defining it is imported: "
                           "run that cell first, or pass --plugin FILE.py to the cmar command")
        return self[name](**kwargs)


IMAGE_ENCODERS = Registry("image encoder")
SEQUENCE_ENCODERS = Registry("sequence encoder")  # used by the text and story encoders
FUSIONS = Registry("fusion")
DECODERS = Registry("decoder")


def count_parameters(module) -> int:
    """Trainable parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

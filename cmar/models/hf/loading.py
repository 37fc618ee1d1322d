"""Naming and loading pretrained parts: ``hf:<hub id or local folder>`` through ``from_pretrained``.

Loading never sets ``trust_remote_code``: only architectures that ship with ``transformers``
load. A name that cannot be loaded (offline, not in the local cache, a typo, a folder without
the files) raises one :class:`PretrainedLoadError` that says what to do next.
"""

from __future__ import annotations

from pathlib import Path

from cmar.settings import HF_PREFIX


class PretrainedLoadError(RuntimeError):
    """A pretrained part that ``from_pretrained`` could not load."""


def hf_source(name: str | None) -> str | None:
    """The hub id or folder of a part named ``hf:<source>``; None for a built-in part."""
    if not isinstance(name, str) or not name.startswith(HF_PREFIX):
        return None
    source = name[len(HF_PREFIX):].strip()
    if not source:
        raise ValueError(f"{name!r} names no model: write hf:<hub id or local folder>")
    return str(Path(source).expanduser()) if source.startswith(("/", ".", "~")) else source


def load_pretrained(loader, source: str, what: str, **kwargs):
    """``loader.from_pretrained(source, **kwargs)`` (never with remote code), or a
    :class:`PretrainedLoadError` naming ``what`` was being loaded and how to fix it."""
    if "trust_remote_code" in kwargs:
        raise ValueError("cmar never runs a model repository's own code (trust_remote_code)")
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        if Path(source).exists():
            hint = (f"the folder {source} exists but does not hold a loadable {what}; write it "
                    "with save_pretrained")
        else:
            hint = (f"{source!r} is not in the local Hugging Face cache and could not be "
                    "downloaded; run once with network (it is cached under ~/.cache/huggingface) "
                    "or pass a local folder written by save_pretrained, as hf:/path/to/folder")
        raise PretrainedLoadError(f"cannot load the {what} hf:{source}: {hint}. "
                                  f"({type(error).__name__}: {first})") from error


def pretrained_tokenizer(source: str):
    """The tokenizer of a pretrained part (fast if one exists), with a [PAD]."""
    from transformers import AutoTokenizer

    from cmar.data.tokenizer import with_padding

    return with_padding(load_pretrained(AutoTokenizer, source, "tokenizer"))


def caption_tokenizer(model_cfg):
    """The caption tokenizer a config implies: a pretrained decoder's own, or None (a BPE is
    then trained on the training captions)."""
    source = hf_source(model_cfg.decoder)
    if source is None:
        return None
    tokenizer = pretrained_tokenizer(source)
    if tokenizer.bos_token is None:  # a caption starts with [BOS]: end-of-text where none
        tokenizer.bos_token = tokenizer.eos_token
    return tokenizer


def context_tokenizer(model_cfg, caption_tokenizer_):
    """The context captions' tokenizer: a pretrained text encoder's own, or the caption
    tokenizer (a built-in text encoder embeds the caption tokenizer's ids)."""
    source = hf_source(model_cfg.text_encoder)
    return caption_tokenizer_ if source is None else pretrained_tokenizer(source)


def tokenizers_for(model_cfg, tokenizer=None) -> dict:
    """``prepare_data``'s tokenizer arguments for a model config: the caption ``tokenizer`` (the
    one given, e.g. a run's; else a pretrained decoder's; else None, a BPE is then trained)
    and the ``context_tokenizer`` (a pretrained text encoder's, else the caption one)."""
    tokenizer = tokenizer if tokenizer is not None else caption_tokenizer(model_cfg)
    return {"tokenizer": tokenizer, "context_tokenizer": context_tokenizer(model_cfg, tokenizer)}


def enable_checkpointing(model, enabled: bool) -> None:
    """Gradient checkpointing (recompute activations in backward) on a trainable part."""
    if enabled and any(p.requires_grad for p in model.parameters()):
        # its name from transformers 5.x; the older one is deprecated there
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()


def freeze(module, keep: set[str] = frozenset()) -> None:
    """No gradient for the parameters of ``module``, except those named in ``keep``."""
    for name, parameter in module.named_parameters():
        if name not in keep:
            parameter.requires_grad_(False)

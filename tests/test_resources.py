"""A run that cannot fit fails before its first epoch with a message naming the knobs, and the
memory check leaves no trace on the run."""

import pytest
import torch
from test_training import smoke

from cmar.train import Trainer
from cmar.train.guards import ResourceError, check_first_step, is_out_of_memory, largest_windows


def test_a_batch_that_cannot_fit_is_refused_before_the_first_epoch(shapes_cache, tmp_path):
    """The model's image encoder is made to need an impossible 2**45 bytes per window (a
    stand-in for a batch too large for the machine): the real allocator refuses, and the run
    stops before any epoch with the settings to lower."""
    trainer = Trainer(smoke(shapes_cache, tmp_path), progress=False)
    encoder = trainer.model.image_encoder
    original = encoder.forward

    def huge(images, *args, **kwargs):
        torch.empty(len(images) * 2**45, dtype=torch.uint8)
        return original(images, *args, **kwargs)

    encoder.forward = huge
    with pytest.raises(ResourceError, match=r"largest batch \(16 windows\).*data\.batch_size "
                                            r"\(now 16\).*data\.image_size \(32\)"):
        trainer.fit()
    assert trainer.history == [] and not (trainer.run_dir / "last.pt").exists()


def test_other_errors_in_the_check_are_not_disguised(shapes_cache, tmp_path):
    trainer = Trainer(smoke(shapes_cache, tmp_path), progress=False)

    def broken(batch):
        raise ValueError("a shape bug")

    with pytest.raises(ValueError, match="a shape bug"):
        check_first_step(trainer.model, broken, None, "")
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_out_of_memory(RuntimeError("size mismatch"))


def test_the_check_leaves_weights_buffers_gradients_and_random_state_untouched(shapes_cache,
                                                                                tmp_path):
    trainer = Trainer(smoke(shapes_cache, tmp_path), progress=False)
    dataset = trainer.data.datasets["train"]
    rows = largest_windows(dataset, 16)
    sizes = [len(dataset.ids[dataset.windows[i].story][dataset.windows[i].t]) for i in rows]
    assert max(sizes) == max(len(dataset.ids[w.story][w.t]) for w in dataset.windows)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    trainer._check_memory()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert all(p.grad is None for p in trainer.model.parameters())
    assert torch.equal(rng, torch.get_rng_state())

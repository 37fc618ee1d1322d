"""The config key ``device``: refused early when bad or absent, honoured by training and
evaluation, and MPS falls back to the CPU when an op is missing there."""

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState

import cmar.devices
import cmar.train.launch
from cmar.cli import main
from cmar.config import load_config, save_config
from cmar.devices import amp_dtype, mps_or_cpu, resolve_device
from cmar.evaluation.run import device_for, evaluate_run
from cmar.train import Trainer

TINY = ("data.n_stories=24", "train.epochs=1")


def smoke(shapes_cache, tmp_path, *extra):
    return load_config("smoke", [f"data.cache_dir={shapes_cache}", f"runs_dir={tmp_path}",
                                 *TINY, *extra])


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine with neither CUDA nor MPS, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cmar.devices, "mps_available", lambda: False)


@pytest.fixture
def fresh_accelerate():
    """Accelerate fixes one device per process: these runs start from none and leave none
    (a run on the CPU after one on a GPU, or before one, would be refused)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_a_bad_device_is_refused_at_load_in_one_line(capsys):
    message = "config key device must be one of auto, cpu, cuda, mps, got 'gpu'"
    with pytest.raises(ValueError, match=message):
        load_config("smoke", ["device=gpu"])
    with pytest.raises(ValueError, match=r"device expects str"):
        load_config("smoke", ["device=1"])
    assert main(["train", "--config", "smoke", "--set", "device=gpu"]) == 2
    assert capsys.readouterr().err == f"cmar: error: {message}\n"
    with pytest.raises(ValueError, match=message):
        resolve_device("gpu")


def test_every_allowed_device_loads_and_an_old_config_without_the_key_takes_auto(tmp_path):
    for name in ("auto", "cpu", "cuda", "mps"):
        assert load_config("smoke", [f"device={name}"]).device == name
    save_config(load_config("smoke"), tmp_path / "config.yaml")
    tree = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del tree["device"]  # a run folder written before the key existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree))
    assert load_config(tmp_path / "config.yaml").device == "auto"


def test_auto_resolves_to_the_cpu_without_a_gpu(no_gpu):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert device_for() == device_for("auto") == torch.device("cpu")


def test_a_missing_cuda_or_mps_is_refused_before_any_work(no_gpu, shapes_cache, tmp_path,
                                                          capsys):
    with pytest.raises(RuntimeError, match="device is 'cuda' but this machine has no CUDA"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match="device is 'mps' but MPS .* is not available"):
        resolve_device("mps")
    cache = tmp_path / "cache"
    for name in ("cuda", "mps"):
        assert main(["train", "--config", "smoke", "--set", f"device={name}",
                     "--set", f"runs_dir={tmp_path / 'runs'}",
                     "--set", f"data.cache_dir={cache}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"cmar: error: config key device is '{name}'")
        assert err.count("\n") == 1
    assert not cache.exists() and not (tmp_path / "runs").exists()  # nothing was done


def test_device_cpu_trains_and_evaluates_on_the_cpu(shapes_cache, tmp_path, fresh_accelerate,
                                                    no_gpu, capsys):
    trainer = Trainer(smoke(shapes_cache, tmp_path, "device=cpu"), progress=False)
    assert trainer.accelerator.device.type == "cpu"
    assert trainer.accelerator.mixed_precision == "no"  # AMP only ever on CUDA
    history = trainer.fit()
    assert [row["epoch"] for row in history] == [1]
    assert next(trainer.model.parameters()).device.type == "cpu"
    assert load_config(trainer.run_dir / "config.yaml").device == "cpu"
    # evaluation reads the run's device; one this machine lacks is refused by name
    with pytest.raises(RuntimeError, match="device is 'cuda'"):
        evaluate_run(trainer.run_dir, progress=False, device="cuda")
    assert main(["evaluate", str(trainer.run_dir), "--device", "cuda"]) == 2
    assert "config key device is 'cuda'" in capsys.readouterr().err


def test_an_op_missing_on_mps_falls_back_to_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cmar.devices, "mps_available", lambda: True)
    assert resolve_device("auto") == resolve_device("mps") == torch.device("mps")
    model = torch.nn.Linear(2, 2)
    seen = []

    def missing(m, device):
        seen.append(device)
        raise NotImplementedError("The operator 'aten::foo' is not currently implemented for "
                                  "the MPS device.\nSecond line.")

    assert mps_or_cpu(model, missing) == torch.device("cpu")
    assert seen == [torch.device("mps")]
    assert next(model.parameters()).device.type == "cpu"
    err = capsys.readouterr().err
    assert err == ("warning: an op is missing on MPS (The operator 'aten::foo' is not currently "
                   "implemented for the MPS device.); falling back to the CPU\n")
    assert mps_or_cpu(model, lambda m, device: None) == torch.device("mps")  # the probe ran

    def broken(m, device):
        raise RuntimeError("another failure")

    with pytest.raises(RuntimeError, match="another failure"):  # only a missing op falls back
        mps_or_cpu(model, broken)


class MpsAccelerator(cmar.train.launch.Accelerator):
    """An Accelerator that says it holds MPS unless asked for the CPU (the trainer reads its
    device before the probe step, which the test replaces, so nothing goes to MPS)."""

    def __init__(self, *args, cpu=False, **kwargs):
        super().__init__(*args, cpu=cpu, **kwargs)
        self.pretend = not cpu

    @property
    def device(self):
        return torch.device("mps") if self.pretend else super().device


def test_training_on_mps_with_a_missing_op_restarts_on_the_cpu(shapes_cache, tmp_path,
                                                               monkeypatch, fresh_accelerate,
                                                               capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cmar.devices, "mps_available", lambda: True)
    monkeypatch.setattr(cmar.train.launch, "Accelerator", MpsAccelerator)
    probed = []

    def missing(self, model, device):
        probed.append(device)
        raise NotImplementedError("aten::foo is not implemented for MPS")

    monkeypatch.setattr(Trainer, "_probe_step", missing)
    trainer = Trainer(smoke(shapes_cache, tmp_path), progress=False)  # device: auto -> mps
    assert probed == [torch.device("mps")]
    assert "an op is missing on MPS (aten::foo" in capsys.readouterr().err
    assert trainer.accelerator.device.type == "cpu" and not trainer.accelerator.pretend
    assert [row["epoch"] for row in trainer.fit()] == [1]
    assert next(trainer.model.parameters()).device.type == "cpu"


def fake_gpu(monkeypatch, capability):
    """A CUDA GPU of this compute capability, whatever this machine has. is_bf16_supported says
    True, as it does on a real T4 (it counts emulation): a precision taken from it would be
    bf16 there, so the T4 cases prove it is not what decides."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


@pytest.mark.parametrize(("capability", "dtype"), [((7, 5), torch.float16),  # T4 (Colab)
                                                   ((7, 0), torch.float16),  # V100
                                                   ((8, 0), torch.bfloat16),  # A100
                                                   ((8, 6), torch.bfloat16),  # RTX 30xx
                                                   ((9, 0), torch.bfloat16)])  # H100
def test_amp_dtype_is_bf16_only_from_compute_capability_8(monkeypatch, capability, dtype):
    fake_gpu(monkeypatch, capability)
    assert amp_dtype(torch.device("cuda")) == dtype
    assert amp_dtype("cuda") == amp_dtype("cuda:0") == dtype


def test_amp_dtype_is_none_on_the_cpu_and_mps(monkeypatch):
    fake_gpu(monkeypatch, (9, 0))  # even with a GPU present
    for device in ("cpu", "mps", torch.device("cpu"), torch.device("mps")):
        assert amp_dtype(device) is None


class RecordedAccelerator:
    """Stands in for Accelerate's Accelerator: keeps the arguments, builds nothing (a real one
    would need the CUDA device these tests only pretend to have)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.mark.parametrize(("capability", "precision"), [((7, 5), "fp16"), ((8, 0), "bf16"),
                                                       ((9, 0), "bf16")])
def test_make_accelerator_picks_the_precision_of_the_gpu(monkeypatch, capability, precision):
    fake_gpu(monkeypatch, capability)
    monkeypatch.setattr(cmar.train.launch, "Accelerator", RecordedAccelerator)
    for device in ("auto", "cuda"):
        made = cmar.train.launch.make_accelerator(load_config("smoke", [f"device={device}"]))
        assert made.kwargs["mixed_precision"] == precision
        assert made.kwargs["cpu"] is False
        assert len(made.kwargs["kwargs_handlers"]) == 1  # the process group's timeout
    off = cmar.train.launch.make_accelerator(load_config("smoke", ["train.amp=false"]))
    assert off.kwargs["mixed_precision"] == "no"


def test_make_accelerator_takes_no_mixed_precision_on_the_cpu_or_mps(monkeypatch):
    fake_gpu(monkeypatch, (9, 0))
    monkeypatch.setattr(cmar.devices, "mps_available", lambda: True)
    monkeypatch.setattr(cmar.train.launch, "Accelerator", RecordedAccelerator)
    for device in ("cpu", "mps"):
        made = cmar.train.launch.make_accelerator(load_config("smoke", [f"device={device}"]))
        assert made.kwargs["mixed_precision"] == "no"

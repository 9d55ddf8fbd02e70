"""A GPU the installed torch has no kernels for is a clear error at startup, naming the GPU,
its capability, the build's arch list and the install that fixes it; and `make setup` picks
that install by itself (scripts/torch_spec.sh). CUDA is faked: these run on any machine."""
import os
import subprocess

import pytest
import torch
from detectron2.config import get_cfg

from e3va_d2.config import add_e3va_config, load_config
from e3va_d2.engine import E3VATrainer, YacsTrainer
from e3va_d2.engine.predictor import Predictor
from e3va_d2.utils.cuda_build import (
    CUDA12_INDEX,
    UnsupportedGPUError,
    build_covers,
    check_cuda_build,
    torch_spec_for,
)

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMO = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")
CUDA13_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1+cu130
CUDA12_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


@pytest.fixture
def fake_gpu(monkeypatch):
    """One visible GPU of the given capability, and a torch built for ``arch_list``."""

    def install(capability, arch_list=CUDA13_ARCHS, name="NVIDIA GeForce GTX 1080 Ti"):
        monkeypatch.setattr(torch.version, "hip", None, raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)

    return install


@pytest.mark.parametrize("capability,arch_list,covered", [
    ((6, 1), CUDA13_ARCHS, False),  # GTX 1080Ti on the default wheels
    ((6, 0), CUDA13_ARCHS, False),  # P100
    ((7, 0), CUDA13_ARCHS, False),  # V100
    ((7, 5), CUDA13_ARCHS, True),
    ((8, 9), CUDA13_ARCHS, True),  # sm_86 code runs on 8.9 (same major, lower minor)
    ((12, 1), CUDA13_ARCHS, True),
    ((6, 1), CUDA12_ARCHS, True),
    ((7, 0), CUDA12_ARCHS, True),
    ((12, 0), CUDA12_ARCHS, False),  # a Blackwell card on the CUDA 12.6 wheels
    ((12, 0), ["sm_90", "compute_90"], True),  # PTX: the driver compiles it for newer cards
    ((9, 0), ["sm_90a"], True),
    ((10, 0), ["sm_90a"], False),  # arch-specific code: that capability only
    ((3, 7), CUDA12_ARCHS, False),
])
def test_build_covers_sass_of_the_same_major_and_ptx_of_lower_capabilities(capability,
                                                                           arch_list, covered):
    assert build_covers(arch_list, capability) is covered


def test_an_unsupported_gpu_is_an_error_naming_the_gpu_the_build_and_the_fix(fake_gpu):
    fake_gpu((6, 1))
    with pytest.raises(UnsupportedGPUError) as error:
        check_cuda_build("cuda")
    message = str(error.value)
    assert "GTX 1080 Ti" in message and "6.1" in message
    assert " ".join(CUDA13_ARCHS) in message
    torch_version = torch.__version__.split("+")[0]
    assert f"TORCH_SPEC='torch=={torch_version}" in message and CUDA12_INDEX in message


def test_a_supported_gpu_the_cpu_and_an_older_card_with_its_build_pass(fake_gpu):
    fake_gpu((8, 6))
    check_cuda_build("cuda")
    check_cuda_build("cuda:0")
    check_cuda_build("cpu")
    fake_gpu((7, 0), arch_list=CUDA12_ARCHS)
    check_cuda_build("cuda")


def test_a_card_too_new_for_the_cuda12_build_is_told_to_take_the_default_wheels(fake_gpu):
    fake_gpu((12, 0), arch_list=CUDA12_ARCHS, name="NVIDIA RTX PRO 6000")
    with pytest.raises(UnsupportedGPUError, match="RTX PRO 6000") as error:
        check_cuda_build("cuda")
    assert "TORCH_SPEC='torch==" in str(error.value) and "--index-url" not in str(error.value)


def test_a_card_no_build_supports_says_so(fake_gpu):
    fake_gpu((3, 7), name="Tesla K80")
    with pytest.raises(UnsupportedGPUError, match="No build of torch"):
        check_cuda_build("cuda")


def test_training_evaluation_and_the_predictor_stop_before_building_the_model(fake_gpu):
    """Every LazyConfig path builds its model with E3VATrainer.build_model (train_net's training
    and --eval-only, Predictor, the demo and MultiTaskPredictor through it); yacs configs with
    YacsTrainer.build_model."""
    fake_gpu((7, 0), name="Tesla V100-SXM2-16GB")
    cfg = load_config(DEMO, ["train.device=cuda"])
    with pytest.raises(UnsupportedGPUError, match="V100"):
        E3VATrainer.build_model(cfg)
    with pytest.raises(UnsupportedGPUError, match="V100"):
        Predictor(cfg)
    yacs = get_cfg()
    add_e3va_config(yacs)
    yacs.MODEL.DEVICE = "cuda"
    with pytest.raises(UnsupportedGPUError, match="V100"):
        YacsTrainer.build_model(yacs)


def _torch_spec_sh(tmp_path, capabilities: str) -> str:
    """scripts/torch_spec.sh's answer on a machine whose nvidia-smi lists ``capabilities``
    ("" = no nvidia-smi at all)."""
    env = dict(os.environ, PATH=f"{tmp_path}:/usr/bin:/bin")
    if capabilities:
        fake = tmp_path / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\nprintf '{capabilities}'\n")
        fake.chmod(0o755)
    return subprocess.run(["bash", os.path.join(ROOT, "scripts/torch_spec.sh"), "torch==2.14.1",
                           "torchvision==0.29.1"], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("capabilities,old_card", [
    ("", False), ("8.6\\n", False), ("7.5\\n", False), ("10.0\\n12.0\\n", False),
    ("6.1\\n", True), ("7.0\\n", True), ("8.6\\n6.0\\n", True),  # the oldest card decides
])
def test_make_setup_picks_the_cuda12_wheels_for_cards_older_than_7_5(tmp_path, capabilities,
                                                                     old_card):
    spec = _torch_spec_sh(tmp_path, capabilities)
    expected = "torch==2.14.1 torchvision==0.29.1"
    assert spec == (f"{expected} --index-url {CUDA12_INDEX}" if old_card else expected)
    if capabilities:  # the startup error names the same install as `make setup` picks
        lowest = min(tuple(map(int, c.split("."))) for c in capabilities.split("\\n") if c)
        assert ("--index-url" in torch_spec_for(lowest)) is old_card


def test_make_setup_ignores_an_nvidia_smi_that_fails(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate "
                    "with the NVIDIA driver.'\nexit 9\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:/usr/bin:/bin")
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts/torch_spec.sh"), "torch==2.14.1"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == "torch==2.14.1"


def test_the_makefile_installs_what_the_script_picks_unless_torch_spec_is_given(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '6.1\\n'\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "TORCH_SPEC"}
    env["PATH"] = f"{tmp_path}:{env['PATH']}"
    venv = str(tmp_path / "venv")  # make -n only prints: nothing is created there

    def dry_run(*args):
        return subprocess.run(["make", "-n", "setup", f"VENV={venv}", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True).stdout

    assert f"install -q torch==2.14.1 torchvision==0.29.1 --index-url {CUDA12_INDEX}" in dry_run()
    given = dry_run("TORCH_SPEC=torch==2.5.1")
    assert "install -q torch==2.5.1 " in given and CUDA12_INDEX not in given


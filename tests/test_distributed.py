"""Two CPU processes (gloo): DDP averages the gradients of the trainable parameters, so one step
on two halves of a batch equals one step on the whole batch in one process; and train_net.py
runs a detector with --num-gpus 2 on a machine without GPUs, saving and resuming both ranks'
training state (data position, RNGs)."""
import json
import os
import subprocess
import sys
from itertools import repeat

import pytest
import torch
from detectron2.engine import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from e3va_d2.engine import launch
from e3va_d2.engine.launch import reserved_local_url
from e3va_d2.engine.step import TrainStep
from e3va_d2.modeling import SwinTransformer, TunedSwin

from .conftest import TINY_SWIN

ROOT = os.path.join(os.path.dirname(__file__), "..")
IMAGES = 4


class FeatureEnergy(torch.nn.Module):
    """A loss that is a mean over images, like detectron2's losses."""

    def __init__(self):
        super().__init__()
        self.backbone = TunedSwin(trunk=SwinTransformer(**TINY_SWIN), tuning="e3va")

    def forward(self, images):
        feats = self.backbone(torch.stack(images))
        return {"loss": sum(f.square().mean() for f in feats.values())}


def run_steps(out_file):
    world, rank = comm.get_world_size(), comm.get_rank()
    torch.manual_seed(0)
    model = FeatureEnergy()
    images = [torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(i))
              for i in range(IMAGES)]
    share = IMAGES // world
    params = [p for p in model.parameters() if p.requires_grad]
    model = create_ddp_model(model, device_ids=None, broadcast_buffers=False,
                             gradient_as_bucket_view=True)  # as E3VATrainer's DDP
    step = TrainStep(model, repeat(images[rank * share : (rank + 1) * share]),
                     torch.optim.SGD(params, lr=0.5))
    with EventStorage():
        for i in range(2):
            step.iter = i
            step.run_step()
    if rank == 0 or "{rank}" in out_file:
        torch.save([p.detach() for p in params], out_file.format(rank=rank))


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single, double = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    run_steps(single)
    launch(run_steps, 2, backend="gloo", dist_url="auto", args=(double,))
    one, two = torch.load(single), torch.load(double)
    assert len(one) == len(two) > 0
    start = [p.detach() for p in FeatureEnergy().parameters() if p.requires_grad]
    moved = 0
    for a, b, s in zip(one, two, start):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        moved += not torch.equal(a, s)
    assert moved > len(one) // 2  # the steps did update the adapters


@pytest.mark.slow
def test_train_net_runs_two_cpu_processes_and_resumes_both_ranks(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")

    def train_net(max_iter, *flags):
        cmd = [
            sys.executable, os.path.join(ROOT, "train_net.py"), "--num-gpus", "2", *flags,
            "--config-file", os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py"),
            f"train.output_dir={tmp_path}", f"train.max_iter={max_iter}", "train.eval_period=0",
            "train.device=cpu", "dataloader.train.dataset.names=shapes_mini_train",
            "dataloader.test.dataset.names=shapes_mini_val", "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        return log

    log = train_net(2)
    assert "World size: 2" in log and "copypaste: Task: bbox" in log
    ranks = torch.load(tmp_path / "model_final.pth", weights_only=False)["trainer"]["resume"]
    # Each rank's own stream (positions 0, 2, 4.. and 1, 3, 5..), 2 batches of 2 drawn:
    assert [(r["loader"]["rank"], r["loader"]["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    # rank 0 last drew an even position, rank 1 an odd one; at least 4 each
    assert [r["loader"]["next_position"] % 2 for r in ranks] == [1, 0]
    assert min(r["loader"]["next_position"] for r in ranks) >= 7
    log = train_net(3, "--resume")
    assert "Starting training from iteration 2" in log
    assert "continue approximately" not in log and "starts again" not in log


_MACHINE = """
from e3va_d2.engine import launch
from tests.test_distributed import run_steps
launch(run_steps, 1, num_machines=2, machine_rank={rank}, dist_url="{url}", args=("{out}",),
       backend="gloo")
"""


@pytest.mark.slow
def test_two_machines_on_loopback_train_identically(tmp_path):
    """detectron2's multi-machine path (--num-machines 2 --machine-rank r --dist-url tcp://...):
    two launches, one process each, end with identical trainable weights, equal to one process
    on the same global batch."""
    out = str(tmp_path / "rank{rank}.pt")
    with reserved_local_url() as url:  # held until machine 0's store listens there
        machines = [subprocess.Popen([sys.executable, "-c",
                                      _MACHINE.format(rank=r, url=url, out=out)],
                                     cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    for r in (0, 1)]
        logs = [m.communicate(timeout=300)[0] for m in machines]
    assert all(m.returncode == 0 for m in machines), logs[0][-2000:] + logs[1][-2000:]
    rank0, rank1 = (torch.load(out.format(rank=r)) for r in (0, 1))
    assert len(rank0) == len(rank1) > 0 and all(torch.equal(a, b) for a, b in zip(rank0, rank1))
    single = str(tmp_path / "one.pt")
    run_steps(single)
    for a, b in zip(torch.load(single), rank0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_ddp_benchmark_all_reduces_exactly_the_trainable_gradients(tmp_path):
    """projects/benchmark/ddp.py with 2 gloo processes: each step all-reduces the fp32 gradients
    of the trainable parameters and nothing else (E3VA: a few % of full fine-tuning's)."""
    from projects.benchmark import ddp

    ddp.main(["--methods", "full,e3va", "--steps", "1", "--size", "96",
              "--output", str(tmp_path)])
    rows = {r["method"]: r for r in json.loads((tmp_path / "ddp.json").read_text())["rows"]}
    for row in rows.values():
        assert row["bytes_per_step"] == 4 * row["trainable"]
    assert rows["e3va"]["bytes_per_step"] < 0.5 * rows["full"]["bytes_per_step"]

"""The highway's feedback (``feedback_depth`` k): the trunk's last k blocks run on the highway's
stream, with autograd on frozen weights. k = 0 is today's model; the walk computes the written-out
definition; the trunk gets no gradient and keeps nothing before the feedback; a zero-initialised
highway is still the frozen model; it composes with the memory options and shared walks."""
import os
from types import SimpleNamespace

import pytest
import torch
from detectron2.config import get_cfg, instantiate

from e3va_d2.config import add_e3va_config, load_config
from e3va_d2.modeling import SwinTransformer, TunedSwin, build_tuning
from e3va_d2.modeling.builders import tuning_from_cfg
from e3va_d2.modeling.highway_walk import walk_highways
from e3va_d2.modeling.swin import next_grid
from e3va_d2.modeling.tuning import OptionError, parse_method_spec
from projects.benchmark.measure import saved_bytes_by_module

from .conftest import TINY_SWIN
from .helpers import assert_is_the_frozen_trunk, assert_same_gradients

ROOT = os.path.join(os.path.dirname(__file__), "..")
METHODS = ["e3va", "e3va_spatial"]
TOTAL = sum(TINY_SWIN["depths"])  # 8 blocks: 2 per stage


def tiny(method="e3va", seed=0, **options):
    torch.manual_seed(seed)
    return TunedSwin(trunk=SwinTransformer(**TINY_SWIN),
                     tuning=build_tuning(method, **options)).train()


def perturb(model, std=0.05, seed=1):
    """Every trainable tensor random (the same for every depth), so every path is live."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, std)
    return model


def loss(outputs):
    return sum(o.square().mean() for o in outputs.values())


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def reference(model, images, depth):
    """The definition written out, block by block: the frozen stream under no_grad and
    each step beside it on its branches; from the first of the last ``depth`` blocks on, the
    blocks compute their branches from ``e`` instead, with autograd, and each step reads ``e``
    as the stream; every stage ends with the highway's own stage end (mixer, norm, merging)."""
    trunk, highway = model.trunk, model.highway
    with torch.no_grad():
        frozen, hw = trunk.patch_embed(images)
    e, outputs, index, start = frozen, {}, 0, TOTAL - depth
    for i, stage in enumerate(trunk.layers):
        mask = stage.shift_mask(hw, images.device)
        for j, block in enumerate(stage.blocks):
            step = highway.layers[i]["blocks"][j]
            if index < start:
                with torch.no_grad():
                    a1, a2, after = block.branches(frozen, hw, mask)
                e, frozen = step(e, a1, a2, frozen, hw), after
            else:
                a1, a2, _ = block.branches(e, hw, mask)
                e = step(e, a1, a2, e, hw)
            index += 1
        e = highway.stage_end(trunk, i, e, hw, outputs)
        if stage.downsample is not None:
            with torch.no_grad():
                frozen = stage.downsample(frozen, hw)
            hw = next_grid(hw)
    return outputs


@pytest.mark.parametrize("method", METHODS)
def test_depth_zero_builds_and_computes_exactly_the_model_without_the_option(method):
    """Explicit 0 is the default, bit for bit: the same parameters from the same random draws,
    the same outputs and gradients. (Today's guarantees themselves are the other suites', which
    run at depth 0; the reference test below holds depth 0 to the definition.)"""
    built = []
    for options in (dict(), dict(feedback_depth=0), dict(feedback_depth=3)):
        model = tiny(method, **options)
        built.append((model, torch.get_rng_state()))
    (default, rng), (zero, rng_zero), (fed, rng_fed) = built
    # Feedback adds no parameter and draws nothing: every depth starts from the same weights.
    assert torch.equal(rng, rng_zero) and torch.equal(rng, rng_fed)
    for other in (zero, fed):
        assert default.state_dict().keys() == other.state_dict().keys()
        assert all(torch.equal(v, other.state_dict()[k]) for k, v in default.state_dict().items())
    perturb(default), perturb(zero)
    images = torch.randn(2, 3, 64, 64)
    outs = [default(images), zero(images)]
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    for out in outs:
        loss(out).backward()
    for p, q in zip(trainable(default), trainable(zero)):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("method,depth", [("e3va", 0), ("e3va", 1), ("e3va", 3), ("e3va", TOTAL),
                                          ("e3va_spatial", 0), ("e3va_spatial", 3)])
def test_the_walk_computes_the_written_out_definition(method, depth):
    """Outputs and gradients equal the block-by-block definition (``reference``), bit for bit:
    without feedback (0), within the last stage (1), across a patch merging (3) and over the
    whole trunk (8)."""
    model = perturb(tiny(method, feedback_depth=depth, trainable_downsampling=True))
    images = torch.randn(2, 3, 64, 80)  # odd grids: padding in windows and merging
    walked, written = model(images), reference(model, images, depth)
    assert list(walked) == list(written) == ["p0", "p1", "p2", "p3"]
    for k in walked:
        assert torch.equal(walked[k], written[k]), k
    params = trainable(model)
    for a, b in zip(torch.autograd.grad(loss(walked), params),
                    torch.autograd.grad(loss(written), params)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_the_trunk_gets_no_gradient_and_earlier_adapters_learn_through_the_feedback(method):
    images = torch.randn(2, 3, 64, 80)
    runs, first = {}, {}
    for depth in (0, 2):
        model = perturb(tiny(method, feedback_depth=depth))
        outputs = model(images)
        # What the last output's loss sends to the first stage's adapters, far before the
        # feedback: now through the last stage's attention and MLP too.
        params = dict((n, p) for n, p in model.named_parameters()
                      if n.startswith("highway.layers.0."))
        first[depth] = dict(zip(params, torch.autograd.grad(
            outputs["p3"].square().mean(), list(params.values()), retain_graph=True)))
        loss(outputs).backward()
        runs[depth] = model, outputs
    (_, plain_out), (fed, fed_out) = runs[0], runs[2]
    for name, p in fed.named_parameters():
        trains = name.startswith(("highway.", "trunk.norm"))  # E3VA's trainable set, unchanged
        assert p.requires_grad == trains, name
        assert (p.grad is not None and p.grad.abs().sum() > 0) if trains else p.grad is None, name
    # The feedback is the last stage's: the first three outputs are untouched, the last moves.
    assert all(torch.equal(plain_out[k], fed_out[k]) for k in ("p0", "p1", "p2"))
    assert not torch.allclose(plain_out["p3"], fed_out["p3"])
    # Every one of them, by a tenth of its gradient or more (0.2-0.7 here).
    assert first[0] and all((first[2][n] - g).norm() > 0.1 * g.norm() for n, g in first[0].items())


@pytest.mark.parametrize("method,depth", [("e3va", 3), ("e3va", TOTAL), ("e3va_spatial", 3)])
def test_zeroed_highway_with_feedback_is_still_the_frozen_model_exactly(method, depth):
    """Bit for bit: a zero step adds exactly ``a1`` and ``a2`` in the trunk's order, so ``e``
    stays the frozen stream, and the feedback blocks then compute the trunk's own branches."""
    model = tiny(method, zero_init=True, feedback_depth=depth)
    images = torch.randn(2, 3, 64, 80)
    assert_is_the_frozen_trunk(model, images)


@pytest.mark.parametrize("method", METHODS)
def test_only_the_feedback_blocks_keep_activations(method):
    """Against depth 0, what one forward saves for backward differs only inside the feedback
    blocks: the trunk before them keeps nothing, as without feedback."""
    images = torch.randn(2, 3, 64, 64)
    saved = {}
    for depth in (0, 1, 3):
        model = tiny(method, feedback_depth=depth)
        saved[depth] = saved_bytes_by_module(lambda m=model: m(images), model)
    in_blocks = {0: (), 1: ("trunk.layers.3.blocks.1.",),
                 3: ("trunk.layers.2.blocks.1.", "trunk.layers.3.")}
    for depth in (1, 3):
        changed = {m for m in saved[0].keys() | saved[depth].keys()
                   if saved[0].get(m) != saved[depth].get(m)}
        assert changed and all(m.startswith(in_blocks[depth]) for m in changed), sorted(changed)
        assert not [m for m in saved[0] if m.startswith("trunk.layers.")]
        assert sum(b for m, b in saved[depth].items() if m.startswith(in_blocks[depth])) > 0


@pytest.mark.parametrize("method", METHODS)
def test_a_depth_the_trunk_has_not_is_a_clear_error(method):
    with pytest.raises(ValueError, match=r"feedback_depth=9 is outside 0\.\.8"):
        tiny(method, feedback_depth=9)
    with pytest.raises(ValueError, match=r"feedback_depth=5 is outside 0\.\.4"):
        TunedSwin(trunk=SwinTransformer(**TINY_SWIN, out_features=("p0", "p1")),
                  tuning=build_tuning(method, feedback_depth=5))  # two stages built, 4 blocks
    with pytest.raises(OptionError, match="feedback_depth must be an integer >= 0, got -1"):
        build_tuning(method, feedback_depth=-1)
    tiny(method, feedback_depth=TOTAL)  # every block: allowed


def test_the_option_is_set_from_specs_yacs_and_lazyconfig():
    for method in METHODS:
        assert parse_method_spec(f"{method}:feedback_depth=2") == (method, {"feedback_depth": 2})
    with pytest.raises(ValueError, match="feedback_depth"):
        parse_method_spec("e3va:feedback_depth=-1")
    cfg = get_cfg()
    add_e3va_config(cfg)
    cfg.merge_from_list(["MODEL.TUNING.METHOD", "e3va_spatial", "MODEL.TUNING.FEEDBACK_DEPTH", "2"])
    assert tuning_from_cfg(cfg).feedback_depth == 2
    lazy = load_config(os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py"),
                       ["model.backbone.bottom_up.tuning.feedback_depth=2"])
    assert instantiate(lazy.model.backbone.bottom_up.tuning).feedback_depth == 2


@pytest.mark.parametrize("method,per", [("e3va", "block"), ("e3va_spatial", "stage")])
def test_recomputed_branches_before_the_feedback_give_the_same_gradients(method, per):
    """recompute_branches applies to the frozen blocks before the feedback (the feedback
    blocks keep their activations): lossless there as without feedback."""
    default = perturb(tiny(method, feedback_depth=3))
    recomputing = perturb(tiny(method, feedback_depth=3, recompute_branches=per))
    images = torch.randn(2, 3, 64, 80)
    outs = [m(images) for m in (default, recomputing)]
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    for out in outs:
        loss(out).backward()
    assert_same_gradients(default, recomputing)


def test_narrow_saved_inputs_with_feedback_only_round_backward():
    """The adapters' kept inputs, rounded, now also round the gradient they send into the
    feedback blocks: the forward is unchanged, the gradients close."""
    method = "e3va_spatial"
    wide = perturb(tiny(method, feedback_depth=2))
    narrow = perturb(tiny(method, feedback_depth=2, saved_input_dtype="bfloat16"))
    images = torch.randn(2, 3, 64, 80)
    outs = [m(images) for m in (wide, narrow)]
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    for out in outs:
        loss(out).backward()
    differ = 0
    for p, q in zip(trainable(wide), trainable(narrow)):
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(q.grad, p.grad, rtol=0.05, atol=0.02 * scale)
        differ += not torch.equal(q.grad, p.grad)
    assert differ


def test_a_bfloat16_trunk_runs_its_feedback_blocks_in_bfloat16():
    """The highway's stream is cast into the narrowed blocks and their branches widened back, as
    the trunk's are: the outputs stay float32, close to a float32 trunk's, and the trunk still
    gets no gradient."""
    method = "e3va_spatial"
    wide = perturb(tiny(method, feedback_depth=3))
    narrow = perturb(tiny(method, feedback_depth=3, trunk_dtype="bfloat16"))
    images = torch.randn(2, 3, 64, 64)
    outs = [m(images) for m in (wide, narrow)]
    for k, out in outs[0].items():
        assert outs[1][k].dtype == torch.float32
        torch.testing.assert_close(outs[1][k], out, rtol=0.05, atol=0.05, msg=k)
    for out in outs:
        loss(out).backward()
    for (name, p), q in zip(wide.named_parameters(), narrow.parameters()):
        if p.requires_grad:
            scale = p.grad.abs().max().item()
            torch.testing.assert_close(q.grad, p.grad, rtol=0.1, atol=0.05 * scale, msg=name)
        else:
            assert q.grad is None, name


def test_tasks_of_one_depth_share_a_walk_each_with_its_own_feedback():
    """Two highways on one walk (the multi-task predictor's), both fed back, each through its
    own trunk's LoRA: each gets exactly the outputs and gradients it gets alone; highways of
    different depths cannot share it."""
    from e3va_d2.engine.multitask import SharedTrunkPass

    def task(seed):
        torch.manual_seed(0)  # the same frozen trunk for every task
        trunk = SwinTransformer(**TINY_SWIN)
        torch.manual_seed(seed)
        model = TunedSwin(trunk=trunk, tuning=build_tuning(
            "e3va_spatial", rank=4, feedback_depth=3, feedback_lora=True,
            recompute_branches="stage")).train()
        return perturb(model, seed=seed)  # each task its own highway and LoRA

    tasks, images, alone = [task(1), task(2)], torch.randn(2, 3, 64, 64), []
    for model in tasks:  # each alone first
        outputs = model(images)
        loss(outputs).backward()
        alone.append((outputs, [p.grad for p in trainable(model)]))
        model.zero_grad(set_to_none=True)
    trunk_pass = SharedTrunkPass()
    for model in tasks:
        trunk_pass.lanes.append((model.highway, model.trunk))
        model.highway.trunk_pass = trunk_pass
    together = [m(images) for m in tasks]
    assert trunk_pass.runs == 1
    loss({f"{i}{k}": o for i, out in enumerate(together) for k, o in out.items()}).backward()
    for model, outputs, (outputs_alone, grads) in zip(tasks, together, alone):
        assert all(torch.equal(outputs[k], outputs_alone[k]) for k in outputs)
        for p, grad in zip(trainable(model), grads):
            torch.testing.assert_close(p.grad, grad, rtol=1e-6, atol=1e-7)
    other = SimpleNamespace(feedback_depth=2)  # a highway of another depth
    with pytest.raises(ValueError, match=r"feedback_depth \[2, 3\] cannot share one walk"):
        walk_highways(tasks[0].trunk, images, [(tasks[0].highway, tasks[0].trunk),
                                               (other, tasks[0].trunk)])


def test_feedback_lora_trains_lora_in_the_feedback_blocks_only():
    plain = perturb(tiny("e3va_spatial", feedback_depth=3))
    model = tiny("e3va_spatial", feedback_depth=3, feedback_lora=True)
    fresh = tiny("e3va_spatial", feedback_depth=3).highway.state_dict()
    # LoRA is drawn after the highway: the highway's weights are those of every seed.
    assert all(torch.equal(v, fresh[k]) for k, v in model.highway.state_dict().items())
    blocks = [block for stage in model.trunk.layers for block in stage.blocks]
    assert [b.attn_insert is not None and b.mlp_insert is not None for b in blocks] == [
        False] * 5 + [True] * 3
    lora = [n for n in model.trainable_names if n.startswith("trunk.layers.")]
    assert len(lora) == 3 * 2 * 2  # blocks x (attention, MLP) x (A, B)
    assert all(n.startswith(("trunk.layers.2.blocks.1.", "trunk.layers.3.")) for n in lora)
    # B starts at zero: the model starts exactly where the one without LoRA is.
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == sorted(lora) and not unexpected
    images = torch.randn(2, 3, 64, 80)
    outs = [plain(images), model(images)]
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    loss(outs[1]).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert all(dict(model.named_parameters())[n].grad.abs().sum() > 0 for n in lora
               if n.endswith("up.weight"))


def test_feedback_lora_options_are_checked():
    with pytest.raises(OptionError, match="feedback_lora needs feedback_depth >= 1"):
        build_tuning("e3va", feedback_lora=True)
    with pytest.raises(OptionError, match="feedback_lora cannot be combined with "
                                          "trunk_dtype='bfloat16'.*trunk_dtype=None"):
        build_tuning("e3va_spatial", feedback_depth=2, feedback_lora=True, trunk_dtype="bfloat16")

"""Swin Transformer trunk for dense prediction (Liu et al., ICCV 2021).

Module names equal the keys of the official detection release (``patch_embed``,
``layers.{i}.blocks.{j}``, ``layers.{i}.downsample`` at the *end* of stage ``i``, output norms
``norm{i}``), so official checkpoints load without renaming; :mod:`.swin_weights` maps the
other layouts onto these names.

Unlike the reference code, a block exposes its two residual branches
(:meth:`SwinBlock.attention_branch`, :meth:`SwinBlock.mlp_branch`) so that the E3VA highway
can read them, and the spatial size travels as an argument instead of being written into the
blocks. The trunk is walked in one place (:meth:`SwinTransformer.walk`, stage by stage, and
:meth:`SwinStage.walk_blocks`, block by block); whatever reads the walk or changes how blocks
run (the plain forward's output norms, E3VA's highways, branch recomputation, the trunk's
precision) is a :class:`TrunkHooks`, not another loop.

Shape legend: B batch, H/W token grid, C channels, N tokens per window, nW windows.

One file for the whole architecture (about 460 lines), as the reference implementation keeps
it: its classes are only meaningful together, and checkpoint keys follow this module's tree.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "SWIN_SIZES",
    "swin_size",
    "swin_output_shapes",
    "swin_stage_channels",
    "DropPath",
    "WindowAttention",
    "SwinBlock",
    "PatchMerging",
    "PatchEmbed",
    "SwinStage",
    "SwinTransformer",
    "TrunkHooks",
]

# Architecture hyper-parameters of the released models (Swin paper, Table 1 / appendix).
SWIN_SIZES: Dict[str, Dict[str, Tuple[int, ...] | int]] = {
    "T": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "S": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "B": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "L": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}


def swin_size(name: str) -> Dict[str, Tuple[int, ...] | int]:
    """Keyword arguments of :class:`SwinTransformer` for a released size ("T", "S", "B", "L")."""
    key = name.upper().replace("SWIN-", "").replace("SWIN_", "")
    if key not in SWIN_SIZES:
        raise ValueError(f"Unknown Swin size {name!r}; expected one of {sorted(SWIN_SIZES)}.")
    return dict(SWIN_SIZES[key])


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def _traced_or(*pads) -> bool:
    """Whether any of ``pads`` is non-zero (padding needed), or True while tracing: a trace
    records one branch, and the padding ops (of zero width at sizes that need none) keep it
    valid at every image size. Under tracing sizes are tensors, never turned into bools here."""
    return torch.jit.is_tracing() or any(bool(p) for p in pads)


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) -> (B*nW, window_size**2, C); H and W must be multiples of the window."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)


def window_merge(windows: Tensor, window_size: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B*nW, window_size**2, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def relative_position_index(window_size: int) -> Tensor:
    """(N, N) index into the (2*window-1)**2 bias table for every pair of tokens in a window."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)  # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # N, N, 2
    rel = rel + (window_size - 1)
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        # Derived from the window size, so it is not part of checkpoints.
        self.register_buffer(
            "relative_position_index", relative_position_index(window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> Tensor:
        """(num_heads, N, N) relative position bias."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """x: (B*nW, N, C); mask: (nW, N, N) additive (0 / -100) or None."""
        Bw, N, C = x.shape
        qkv = self.qkv(x).view(Bw, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each Bw, heads, N, C/heads
        bias = self.position_bias().unsqueeze(0).to(q.dtype)  # 1, heads, N, N
        if mask is not None:
            # Each window has its own mask: windows join the heads (a 5-D query would send
            # CUDA's SDPA to its slow math kernel), one mask per window and head, shared by
            # the images.
            nW = mask.shape[0]
            bias = bias + mask.to(q.dtype).unsqueeze(1)  # nW, heads, N, N
            bias = bias.flatten(0, 1).unsqueeze(0)  # 1, nW * heads, N, N
            q, k, v = (t.reshape(Bw // nW, nW * self.num_heads, N, -1) for t in (q, k, v))
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x.reshape(Bw, self.num_heads, N, -1).transpose(1, 2).reshape(Bw, N, C)
        return self.proj(x)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, num_heads={self.num_heads}"


class Mlp(nn.Module):
    """Two-layer feed-forward network of a Swin block."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """One Swin block: ``x + a1`` then ``+ a2``, with a1 the (shifted-)window attention branch
    and a2 the MLP branch. The branches are separate methods because E3VA reads them.

    ``attn_insert`` / ``mlp_insert`` are the places where in-backbone tuning methods (adapters,
    LoRA, AdaptFormer) plug in: a module called as ``insert(sublayer_input, sublayer_output)``
    that returns the new sub-layer output. They are None for the plain Swin, and keep the
    pre-trained parameter names untouched.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size={shift_size} must lie in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.attn_insert: Optional[nn.Module] = None
        self.mlp_insert: Optional[nn.Module] = None

    def attention_branch(self, x: Tensor, hw: Tuple[int, int], shift_mask: Optional[Tensor]):
        """a1 = DropPath(W-MSA(LN1(x))): x (B, H*W, C) -> (B, H*W, C).

        The map is padded to window multiples here (after the norm, as in the reference
        implementation), so any input size works.
        """
        H, W = hw
        B, L, C = x.shape
        ws = self.window_size
        y = self.norm1(x).view(B, H, W, C)
        pad_b, pad_r = (-H) % ws, (-W) % ws
        padded = _traced_or(pad_b, pad_r)
        if padded:
            y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if self.shift_size:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        tokens = window_partition(y, ws)
        windows = self.attn(tokens, shift_mask if self.shift_size else None)
        if self.attn_insert is not None:
            windows = self.attn_insert(tokens, windows)
        y = window_merge(windows, ws, Hp, Wp)
        if self.shift_size:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        if padded:
            y = y[:, :H, :W, :]
        return self.drop_path(y.reshape(B, L, C))

    def mlp_branch(self, x: Tensor) -> Tensor:
        """a2 = DropPath(MLP(LN2(x))), where x already includes a1."""
        z = self.norm2(x)
        h = self.mlp(z)
        if self.mlp_insert is not None:
            h = self.mlp_insert(z, h)
        return self.drop_path(h)

    def branches(self, x: Tensor, hw: Tuple[int, int], shift_mask: Optional[Tensor]
                 ) -> Tuple[Tensor, Tensor, Tensor]:
        """``(a1, a2, block output)``: both branch outputs and ``(x + a1) + a2``."""
        a1 = self.attention_branch(x, hw, shift_mask)
        x = x + a1
        a2 = self.mlp_branch(x)
        return a1, a2, x + a2

    def forward(self, x: Tensor, hw: Tuple[int, int], shift_mask: Optional[Tensor]) -> Tensor:
        return self.branches(x, hw, shift_mask)[2]


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm(4C) -> Linear(4C -> 2C, no bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """(B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C)."""
        return self.reduction(self.merged_norm(x, hw))

    def merged_norm(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """The concatenated 2x2 neighbourhoods, normalised: (B, H*W, C) -> (B, H*W/4, 4C).

        A separate step so that the E3VA highway can recompute it in backward: the norm
        would otherwise keep the concatenation, a second copy of the highway's tokens.
        """
        H, W = hw
        B, _, C = x.shape
        x = x.view(B, H, W, C)
        if _traced_or(H % 2, W % 2):
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # Channel order (row, col) offsets (0,0), (1,0), (0,1), (1,1), as in the checkpoints.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.norm(x.view(B, -1, 4 * C))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (stride = patch size) followed by LayerNorm."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """(B, 3, H, W) -> tokens (B, H'*W', C) and the grid (H', W'), H' = ceil(H/patch)."""
        p = self.patch_size
        H, W = images.shape[-2:]
        if _traced_or(H % p, W % p):
            images = F.pad(images, (0, (-W) % p, 0, (-H) % p))
        x = self.proj(images)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class SwinStage(nn.Module):
    """Blocks of one resolution (alternating regular / shifted windows), then an optional
    patch merging that halves the resolution for the next stage."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: Sequence[float],
        downsample: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else self.shift_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def shift_mask(self, hw: Tuple[int, int], device: torch.device) -> Tensor:
        """(nW, N, N) additive mask that stops attention between regions that the cyclic
        shift made adjacent (0 inside a region, -100 across, as in the reference code)."""
        ws, s = self.window_size, self.shift_size
        Hp, Wp = ((n + ws - 1) // ws * ws for n in hw)  # integer ops: traced sizes stay sizes
        region = torch.zeros((1, Hp, Wp, 1), device=device)
        bounds = (slice(0, -ws), slice(-ws, -s), slice(-s, None))
        label = 0
        for h in bounds:
            for w in bounds:
                region[:, h, w, :] = label
                label += 1
        regions = window_partition(region, ws).squeeze(-1)  # nW, N
        different = regions.unsqueeze(1) != regions.unsqueeze(2)
        return torch.zeros_like(different, dtype=torch.float32).masked_fill_(different, -100.0)

    def walk_blocks(
        self,
        x: Tensor,
        hw: Tuple[int, int],
        on_block: Optional[Callable[[int, Tensor, Tensor, Tensor], Optional[Tensor]]] = None,
        blocks: Optional[range] = None,
        checkpointed: bool = False,
        context: Callable[[], ContextManager] = contextlib.nullcontext,
    ) -> Tensor:
        """The trunk's one loop over blocks: ``blocks`` of this stage (all by default) on ``x``
        (B, H*W, C), returning their output. ``on_block(j, x, a1, a2)`` sees each block's input
        and branch outputs, and may return the stream the next block reads instead of this
        block's output (E3VA's feedback runs the highway's stream through the blocks);
        ``checkpointed``: activation checkpointing of each block when gradients flow;
        ``context()``: what each block (not ``on_block``) runs in."""
        mask = self.shift_mask(hw, x.device)
        for j in range(len(self.blocks)) if blocks is None else blocks:
            block = self.blocks[j]
            with context():
                if checkpointed and x.requires_grad:
                    a1, a2, out = checkpoint(block.branches, x, hw, mask, use_reentrant=False)
                else:
                    a1, a2, out = block.branches(x, hw, mask)
            if on_block is not None:
                fed = on_block(j, x, a1, a2)
                out = out if fed is None else fed
            del a1, a2  # not alive during the next block, unless the reader kept them
            x = out
        return x

    def forward(
        self, x: Tensor, hw: Tuple[int, int], hooks: Optional[TrunkHooks] = None, index: int = 0
    ) -> Tuple[Tensor, Tensor, Tuple[int, int]]:
        """Stage ``index`` of a walk of the trunk (``hooks``: the plain trunk by default).
        Returns the stage output (before merging), the next stage's input and its grid."""
        hooks = TrunkHooks() if hooks is None else hooks
        x = hooks.run_blocks(index, self, hooks.stage_input(index, x), hw)
        hooks.stage_end(index, x, hw)
        if self.downsample is None:
            return x, x, hw
        return x, hooks.merge(index, self.downsample, x, hw), next_grid(hw)


class TrunkHooks:
    """What plugs into the one walk of the trunk (:meth:`SwinTransformer.walk`).

    The walk runs the patch embedding, then each stage's blocks and its patch merging, and
    calls these methods on the way. Readers of the trunk's intermediate tensors (E3VA's
    highways: every block's branch outputs ``a1``, ``a2`` and the stream, every stage's end and
    grid) and policies for how the trunk runs (branch recomputation, the trunk's precision)
    override them; none walks the trunk again. This base class is the plain trunk: blocks run
    under the caller's autograd, and nothing reads them.

    A policy may stop the trunk's own stream (``run_blocks`` returns None): the walk still
    visits every later stage, its grid and its hooks, with None for the stream (E3VA's feedback:
    the highways carry their own streams through the trunk's last blocks).
    """

    checkpoint_blocks = False  # activation checkpointing of each block when gradients flow

    def start(self, x: Tensor, hw: Tuple[int, int]) -> None:
        """The patch embedding (B, H*W, C) on its grid ``hw``."""

    def stage_input(self, i: int, x: Tensor) -> Tensor:
        """The stream as stage ``i``'s blocks read it (a narrower trunk casts it here)."""
        return x

    def run_blocks(self, i: int, stage: SwinStage, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """Stage ``i``'s blocks on ``x``; a policy that runs them otherwise overrides this."""
        return stage.walk_blocks(x, hw, lambda j, x, a1, a2: self.block(i, j, x, a1, a2, hw),
                                 checkpointed=self.checkpoint_blocks, context=self.blocks_context)

    def blocks_context(self) -> ContextManager:
        """What each block runs in (a narrowed trunk's own autocast); nothing by default."""
        return contextlib.nullcontext()

    def block(self, i: int, j: int, x: Tensor, a1: Tensor, a2: Tensor, hw: Tuple[int, int]
              ) -> None:
        """Block ``j`` of stage ``i`` ran: its input ``x`` and its branch outputs (its output is
        ``(x + a1) + a2``)."""

    def stage_end(self, i: int, x: Tensor, hw: Tuple[int, int]) -> None:
        """Stage ``i``'s output (before its patch merging) on its grid ``hw``."""

    def merge(self, i: int, merge: PatchMerging, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """The trunk's patch merging of stage ``i``'s output: the next stage's input."""
        return merge(x, hw)


def next_grid(hw: Tuple[int, int]) -> Tuple[int, int]:
    """Token grid after patch merging (odd sizes are padded by one)."""
    return ((hw[0] + 1) // 2, (hw[1] + 1) // 2)


class SwinTransformer(Backbone):
    """Swin Transformer as a detectron2 backbone with outputs ``p0..p3`` (strides 4..32).

    Args:
        embed_dim: channels of stage 0 (doubles every stage).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window (7 for the 224px releases, 12 for the 384px ones).
        mlp_ratio: MLP hidden size / channels.
        qkv_bias: learn a bias for q, k, v.
        drop_path_rate: stochastic depth, linearly increasing over all blocks up to this value.
        patch_size: patch embedding stride.
        in_chans: input channels.
        out_features: subset of ``("p0", "p1", "p2", "p3")`` to return; only the stages needed
            for them are built and run.
        use_checkpoint: activation checkpointing of blocks (non-reentrant) when gradients flow.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        in_chans: int = 3,
        out_features: Sequence[str] = ("p0", "p1", "p2", "p3"),
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ")
        names = [f"p{i}" for i in range(len(depths))]
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(f"out_features {list(out_features)} must be a subset of {names}")
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_heads = tuple(num_heads)
        self.window_size = window_size
        self.use_checkpoint = use_checkpoint
        # Stages after the last requested output would be computed for nothing.
        self.num_stages = max(names.index(f) for f in out_features) + 1
        self.num_features = [swin_stage_channels(embed_dim, i) for i in range(len(depths))]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear decay rule
        self.layers = nn.ModuleList()
        for i in range(self.num_stages):
            first = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    dim=self.num_features[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=rates[first : first + depths[i]],
                    # The last built stage needs no merging: nothing consumes its output.
                    downsample=i < self.num_stages - 1,
                )
            )
        self._out_features = list(out_features)
        self.out_indices = [names.index(f) for f in out_features]
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self._out_feature_channels = {f"p{i}": self.num_features[i] for i in self.out_indices}
        self._out_feature_strides = {f"p{i}": patch_size * 2**i for i in self.out_indices}
        self.apply(_init_weights)

    @property
    def size_divisibility(self) -> int:
        return self._out_feature_strides[f"p{self.num_stages - 1}"]

    def walk(self, images: Tensor, hooks: TrunkHooks) -> None:
        """The one walk of the trunk over ``images`` (B, 3, H, W): the patch embedding, then
        every stage (its blocks, then its patch merging), with ``hooks`` reading it and deciding
        how the blocks run. Autograd is the caller's (a frozen trunk walks under no_grad)."""
        x, hw = self.patch_embed(images)
        hooks.start(x, hw)
        for i, stage in enumerate(self.layers):
            _, x, hw = stage(x, hw, hooks, i)

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        """(B, 3, H, W) -> {"p{i}": (B, C_i, ceil(H / stride_i), ceil(W / stride_i))}."""
        features = _OutputNorms(self)
        self.walk(images, features)
        return features.outputs


class _OutputNorms(TrunkHooks):
    """The plain trunk's outputs: each requested stage's output through its norm, as a map."""

    def __init__(self, trunk: SwinTransformer):
        self.trunk, self.checkpoint_blocks = trunk, trunk.use_checkpoint
        self.outputs: Dict[str, Tensor] = {}

    def stage_end(self, i: int, x: Tensor, hw: Tuple[int, int]) -> None:
        if i in self.trunk.out_indices:
            self.outputs[f"p{i}"] = tokens_to_map(getattr(self.trunk, f"norm{i}")(x), hw)


def swin_stage_channels(embed_dim: int, stage: int) -> int:
    """Channels of output ``p{stage}``: ``embed_dim`` doubles at every stage."""
    return embed_dim * 2**stage


def swin_output_shapes(embed_dim: int, num_stages: int = 4, patch_size: int = 4
                       ) -> Dict[str, ShapeSpec]:
    """The trunk's outputs ``p0..p{num_stages-1}`` (what ``output_shape()`` returns), for
    configs that size a head from the trunk before it is built."""
    return {f"p{i}": ShapeSpec(channels=swin_stage_channels(embed_dim, i),
                               stride=patch_size * 2**i) for i in range(num_stages)}


def tokens_to_map(x: Tensor, hw: Tuple[int, int]) -> Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    # Contiguous NCHW: convolutions of the neck run several times slower on the strided view.
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1]).contiguous()


def _init_weights(m: nn.Module) -> None:
    """The reference initialisation (used when no checkpoint is loaded)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

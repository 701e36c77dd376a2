"""The T2L hypernetwork: a task embedding in, rank-r LoRA A/B for every layer and target module out.

Reproduces the published architecture (SakanaAI/text-to-lora `HyperModulator`) with the same state-dict key names,
so official checkpoints load directly. Three variants:
  L: one head per module emitting r*(d_in+d_out) (A and B together);
  M: one head per module shared by A and B, told apart by learned A/B output embeddings;
  S: as M, but the head emits one rank row per position (RoPE over the r positions).
Module order is explicit (`HyperNetConfig.target_modules`) and defines the layer-type index; it is never derived
from a set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import nn

from t2lcli import hypernet_defaults as defaults
from t2lcli.engine.kernels import KLinear
from t2lcli.errors import show_value

VARIANTS = ("L", "M", "S")
MAX_SIZE = 1 << 20  # any single size (a sanity bound on configs read from files; real ones are <= 65536)


@dataclass
class HyperNetConfig:
    """Every size of a hypernetwork. `module_dims[m] = (d_in, d_out)`; `target_modules` fixes the type index."""

    variant: str = defaults.VARIANT
    emb_dim: int = 384
    latent: int = defaults.LATENT
    head_in: int = defaults.HEAD_IN
    n_layers: int = 30
    target_modules: list[str] = field(default_factory=lambda: list(defaults.TARGET_MODULES))
    module_dims: dict[str, list[int]] = field(default_factory=dict)
    r: int = defaults.RANK
    lora_alpha: float = defaults.LORA_ALPHA
    use_rslora: bool = True
    head_bias: bool = True
    learnable_pos_emb: bool = False
    dropout: float = 0.05
    training_task: str = "sft"  # "sft" or "recon"
    pred_z_score: bool = False
    factorized: bool = True
    delta_w_scaling: float = 1e4
    ab_offset: bool = False  # an additive A/B offset (multi-task LoRA) is stored
    recon_stats: bool = False  # mean/std of reconstruction targets are stored

    def __post_init__(self) -> None:
        """Validate every field (a config may come from an untrusted checkpoint file).

        Raises:
            ValueError: all problems, joined in one message.
        """
        problems = _config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        self.module_dims = {m: [int(v[0]), int(v[1])] for m, v in self.module_dims.items()}

    @property
    def scaling(self) -> float:
        """The LoRA scale the weights were trained for: alpha/sqrt(r) (rsLoRA) or alpha/r."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def head_out(self, module: str) -> int:
        d_in, d_out = self.module_dims[module]
        if self.variant == "L":
            return self.r * (d_in + d_out)
        if self.variant == "M":
            return self.r * max(d_in, d_out)
        return max(d_in, d_out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyperNetConfig:
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise ValueError(f"unknown hypernet config keys: {', '.join(unknown)}")
        return cls(**data)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _config_problems(c: HyperNetConfig) -> list[str]:
    problems: list[str] = []
    if c.variant not in VARIANTS:
        problems.append(f"variant must be one of {VARIANTS}, got {show_value(c.variant)}")
    for name in ("emb_dim", "latent", "head_in", "n_layers", "r"):
        v = getattr(c, name)
        if not _is_int(v) or not 1 <= v <= MAX_SIZE:
            problems.append(f"{name} must be an integer from 1 to {MAX_SIZE}, got {show_value(v)}")
    if _is_int(c.latent) and c.latent % 4:
        problems.append("latent must be divisible by 4")
    tm = c.target_modules
    if not isinstance(tm, list) or not tm or not all(isinstance(m, str) and m for m in tm) or len(set(tm)) != len(tm):
        problems.append("target_modules must be a non-empty list of distinct names")
    elif not isinstance(c.module_dims, dict):
        problems.append("module_dims must map each target module to [d_in, d_out]")
    else:
        missing = [m for m in tm if m not in c.module_dims]
        if missing:
            problems.append(f"module_dims lacks {show_value(missing)}")
        for m, v in c.module_dims.items():
            if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) and 1 <= x <= MAX_SIZE for x in v)):
                problems.append(f"module_dims[{show_value(m)}] must be two positive integers [d_in, d_out], got {show_value(v)}")
    if not _is_real(c.lora_alpha):
        problems.append(f"lora_alpha must be a finite number, got {show_value(c.lora_alpha)}")
    if not _is_real(c.delta_w_scaling) or c.delta_w_scaling <= 0:
        problems.append(f"delta_w_scaling must be a positive number, got {show_value(c.delta_w_scaling)}")
    if not _is_real(c.dropout) or not 0 <= c.dropout <= 1:
        problems.append(f"dropout must be in [0, 1], got {show_value(c.dropout)}")
    for name in ("use_rslora", "head_bias", "learnable_pos_emb", "pred_z_score", "factorized", "ab_offset", "recon_stats"):
        if not isinstance(getattr(c, name), bool):
            problems.append(f"{name} must be true or false, got {show_value(getattr(c, name))}")
    if c.training_task not in ("sft", "recon"):
        problems.append(f"training_task must be sft or recon, got {show_value(c.training_task)}")
    return problems


class _Residual(nn.Module):
    """u -> u + Drop(SiLU(Linear(Drop(SiLU(Linear(LN(u)))))))  (keys: mlp.0 LN, mlp.1, mlp.4 Linear)."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(width),
            KLinear(width, 4 * width),
            nn.SiLU(),
            nn.Dropout(dropout),
            KLinear(4 * width, width),
            nn.SiLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


def _fused(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """`seq(x)` in eval mode, each KLinear followed by a SiLU as one `KLinear.fused` call (on oneDNN the SiLU is the
    GEMM's post-op: one op instead of two; Dropout is the identity in eval mode)."""
    mods = [m for m in seq if not isinstance(m, nn.Dropout)]
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, KLinear) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.SiLU):
            x, i = m.fused(x, "silu"), i + 2
        else:
            x, i = m(x), i + 1
    return x


def _fused_residual(block: _Residual, x: torch.Tensor) -> torch.Tensor:
    """`block(x)` in eval mode through `_fused` (the sum into the fresh output when no gradient is recorded)."""
    y = _fused(block.mlp, x)
    return y.add_(x) if not torch.is_grad_enabled() else x + y


class _TaskEncoder(nn.Module):
    def __init__(self, emb_dim: int, out: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(KLinear(emb_dim, out), nn.LayerNorm(out))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.mlp(e)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_inv_freq(width: int) -> torch.Tensor:
    """RoPE inverse frequencies 10000^(-2i/width) (not saved in checkpoints; recomputed on load)."""
    return 1.0 / (10000 ** (torch.arange(0, width, 2, dtype=torch.float32, device="cpu") / width))


class HyperLoRA(nn.Module):
    """Task embedding -> LoRA A/B for every layer of every target module."""

    def __init__(self, config: HyperNetConfig) -> None:
        super().__init__()
        self.config = config
        m, drop = config.latent, config.dropout
        e, d = m // 2, m // 4
        self.task_encoder = _TaskEncoder(config.emb_dim, e)
        self.layer_depth_encoder = nn.Sequential(nn.Embedding(config.n_layers, d), nn.LayerNorm(d))
        self.layer_type_encoder = nn.Sequential(nn.Embedding(len(config.target_modules), d), nn.LayerNorm(d))
        self.mixer = nn.Sequential(
            nn.Dropout(drop), KLinear(m, 4 * m), nn.SiLU(), nn.Dropout(drop), KLinear(4 * m, m), nn.SiLU(), nn.Dropout(drop)
        )
        self.mlp1 = _Residual(m, drop)
        self.mlp2 = _Residual(m, drop)
        self.mlp3 = nn.Sequential(
            nn.LayerNorm(m), KLinear(m, 4 * m), nn.SiLU(), nn.Dropout(drop), KLinear(4 * m, config.head_in), nn.SiLU()
        )
        self.heads = nn.ModuleDict(
            {mod: KLinear(config.head_in, config.head_out(mod), bias=config.head_bias) for mod in config.target_modules}
        )
        if config.variant in ("M", "S"):
            self.out_emb = nn.ModuleDict(
                {
                    mod: nn.ParameterDict({"A": nn.Parameter(torch.randn(m)), "B": nn.Parameter(torch.randn(m))})
                    for mod in config.target_modules
                }
            )
            self.out_emb_norm = nn.LayerNorm(m)
        if config.variant == "S":
            if config.learnable_pos_emb:
                self.pos_emb = nn.Sequential(nn.Embedding(config.r, m), nn.LayerNorm(m))
            self.register_buffer("inv_freq", rope_inv_freq(m), persistent=False)
        if config.ab_offset:
            self.AB_offset = self._ab_dict()
        if config.recon_stats:
            self.mean_recon_target = self._ab_dict()
            self.std_recon_target = self._ab_dict()
        self.reset_heads()

    def restore_buffers(self) -> None:
        """Recompute non-persistent buffers (after building on the meta device and loading with assign=True)."""
        if hasattr(self, "inv_freq"):
            self.inv_freq = rope_inv_freq(self.config.latent)

    def _ab_dict(self) -> nn.ModuleDict:
        c = self.config
        return nn.ModuleDict(
            {
                "A": nn.ParameterDict(
                    {mod: nn.Parameter(torch.zeros(c.n_layers, c.r, c.module_dims[mod][0]), requires_grad=False) for mod in c.target_modules}
                ),
                "B": nn.ParameterDict(
                    {mod: nn.Parameter(torch.zeros(c.n_layers, c.module_dims[mod][1], c.r), requires_grad=False) for mod in c.target_modules}
                ),
            }
        )

    @torch.no_grad()
    def reset_heads(self, generator: torch.Generator | None = None) -> None:
        """bias-HyperInit: zero head weights; the head bias is PEFT's initial LoRA (A kaiming-uniform, B = 0)."""
        c = self.config
        for mod, module in self.heads.items():
            head = cast(nn.Linear, module)  # KLinear
            head.weight.zero_()
            if head.bias is None:
                continue
            d_in, d_out = c.module_dims[mod]
            bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform(a=sqrt(5)) on a [r, d_in] weight
            a = (torch.rand(c.r, d_in, generator=generator) * 2 - 1) * bound
            if c.variant == "L":
                head.bias.copy_(torch.cat([a.flatten(), torch.zeros(c.r * d_out)]))
            elif c.variant == "M":
                width = max(d_in, d_out)
                padded = torch.zeros(c.r, width)
                padded[:, :d_in] = a
                head.bias.copy_(padded.flatten() / math.sqrt(2))
            else:
                width = max(d_in, d_out)
                row = torch.zeros(width)
                row[:d_in] = a[0]
                head.bias.copy_(row / math.sqrt(c.r))

    # ------------------------------------------------------------------ forward

    def encode(self, emb: torch.Tensor) -> torch.Tensor:
        """Task embedding [B, emb_dim] -> z [B, latent/2]."""
        return self.task_encoder(emb)

    def _trunk(self, z: torch.Tensor, module: str, layers: torch.Tensor) -> torch.Tensor:
        """z [B, E] -> h [B, L, latent] for one module over the given layers."""
        b, n = z.shape[0], layers.shape[0]
        idx = self.config.target_modules.index(module)
        depth = self.layer_depth_encoder(layers)  # [L, D]
        mtype = self.layer_type_encoder(torch.full((1,), idx, dtype=torch.long, device=z.device))  # [1, Ty]
        x = torch.cat(
            [z[:, None, :].expand(b, n, -1), depth[None].expand(b, n, -1), mtype[None].expand(b, n, -1)], dim=-1
        )
        return self.mlp1(self.mixer(x))

    def _tail(self, u: torch.Tensor, module: str) -> torch.Tensor:
        return self.heads[module](self.mlp3(u))

    def _rope(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate [..., r, latent] over the r positions (rotate-half form, base 10000)."""
        pos = torch.arange(self.config.r, device=x.device, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq.to(x.device)[None]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        return x * cos + _rotate_half(x) * sin

    def _ab_pass(self, h: torch.Tensor, module: str, which: str) -> torch.Tensor:
        """M/S: one pass for A or B. Returns [B, L, r, max(d_in, d_out)]."""
        c = self.config
        g = h + self.out_emb_norm(cast(nn.ParameterDict, self.out_emb[module])[which])
        u = self.mlp2(g)
        if c.variant == "M":
            out = self._tail(u, module)
            return out.view(*out.shape[:-1], c.r, -1)
        u = u[..., None, :].expand(*u.shape[:-1], c.r, u.shape[-1])
        if c.learnable_pos_emb:
            pos = self.pos_emb(torch.arange(c.r, device=u.device))
            u = u + pos
        else:
            u = self._rope(u)
        u = self.mlp2(u)
        return self._tail(u, module)

    def generate_module(self, z: torch.Tensor, module: str, layers: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """LoRA factors for one module: A [B, L, r, d_in], B [B, L, d_out, r] (offsets and raw-scale applied)."""
        c = self.config
        d_in, d_out = c.module_dims[module]
        h = self._trunk(z, module, torch.arange(c.n_layers, device=z.device) if layers is None else layers)
        if c.variant == "L":
            out = self._tail(self.mlp2(h), module)
            a = out[..., : c.r * d_in].reshape(*out.shape[:-1], c.r, d_in)
            b = out[..., c.r * d_in :].reshape(*out.shape[:-1], c.r, d_out).transpose(-1, -2)
        else:
            a = self._ab_pass(h, module, "A")[..., :d_in]
            b = self._ab_pass(h, module, "B")[..., :d_out].transpose(-1, -2)
        return self._to_raw_scale(a, b, module, layers)

    def _to_raw_scale(self, a: torch.Tensor, b: torch.Tensor, module: str, layers: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer statistics and offsets for `layers` (None: all layers, used as stored, without a gathered copy)."""
        c = self.config

        def pick(stats: nn.ModuleDict, which: str) -> torch.Tensor:
            t = cast(torch.Tensor, cast(nn.ParameterDict, stats[which])[module])
            return t if layers is None else t[layers]

        if c.training_task == "recon":
            if c.factorized:
                if c.pred_z_score and c.recon_stats:
                    a = a * (pick(self.std_recon_target, "A") + 1e-10) + pick(self.mean_recon_target, "A")
                    b = b * (pick(self.std_recon_target, "B") + 1e-10) + pick(self.mean_recon_target, "B")
            else:
                s = math.sqrt(c.delta_w_scaling)
                a, b = a / s, b / s
                return a, b
        if c.ab_offset:
            if torch.is_grad_enabled():
                a = a + pick(self.AB_offset, "A").to(a.dtype)
                b = b + pick(self.AB_offset, "B").to(b.dtype)
            else:  # inference: into the heads' fresh output (the same sums; a batch's second copy of every adapter, and
                # its page faults, cost a 64-description batch ~10% of its time)
                a = a.add_(pick(self.AB_offset, "A").to(a.dtype))
                b = b.add_(pick(self.AB_offset, "B").to(b.dtype))
        return a, b

    def forward(self, emb: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Task embeddings [B, emb_dim] -> {module: (A [B,L,r,d_in], B [B,L,d_out,r])}."""
        z = self.encode(emb)
        c = self.config
        if self.training or c.variant != "L" or len(c.target_modules) == 1:
            return {m: self.generate_module(z, m) for m in c.target_modules}
        # inference, L: one trunk pass over every (module, layer) row instead of one per module. The trunk is
        # row-wise, so only the GEMMs' row counts change (fp32 rounding); per-call overhead dominates small shapes
        b, n, mods = z.shape[0], c.n_layers, c.target_modules
        depth = self.layer_depth_encoder(torch.arange(n, device=z.device))  # [L, D]
        mtype = self.layer_type_encoder(torch.arange(len(mods), device=z.device))  # [T, Ty]
        x = torch.cat([z[:, None, None, :].expand(b, len(mods), n, -1), depth[None, None].expand(b, len(mods), n, -1),
                       mtype[None, :, None].expand(b, len(mods), n, -1)], dim=-1)
        u = _fused(self.mlp3, _fused_residual(self.mlp2, _fused_residual(self.mlp1, _fused(self.mixer, x))))  # [B, T, L, head_in]
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, mod in enumerate(mods):
            d_in, d_out = c.module_dims[mod]
            h = self.heads[mod](u[:, i])
            a = h[..., : c.r * d_in].reshape(*h.shape[:-1], c.r, d_in)
            bb = h[..., c.r * d_in :].reshape(*h.shape[:-1], c.r, d_out).transpose(-1, -2)
            out[mod] = self._to_raw_scale(a, bb, mod, None)
        return out

    def n_params(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def count_params_formula(cfg: HyperNetConfig) -> int:
    """Closed-form parameter count (see t2l-reference.md "Parameter counts"); used to cross-check the module."""
    m, h, n = cfg.latent, cfg.head_in, len(cfg.target_modules)
    e, d = m // 2, m // 4
    total = cfg.emb_dim * e + 3 * e + cfg.n_layers * d + 2 * d + n * d + 2 * d
    total += 8 * m * m + 5 * m + 2 * (8 * m * m + 7 * m) + 4 * m * m + 6 * m + 4 * m * h + h
    if cfg.variant in ("M", "S"):
        total += 2 * n * m + 2 * m
        if cfg.variant == "S" and cfg.learnable_pos_emb:
            total += cfg.r * m + 2 * m
    for mod in cfg.target_modules:
        out = cfg.head_out(mod)
        total += h * out + (out if cfg.head_bias else 0)
    return total


def lora_state_dict(
    shape_paths: dict[str, str], factors: dict[str, tuple[torch.Tensor, torch.Tensor]], index: int = 0
) -> dict[str, torch.Tensor]:
    """PEFT-keyed tensors for batch item `index`: `base_model.model.<path>.lora_A.weight` [r,d_in] / lora_B [d_out,r]."""
    out: dict[str, torch.Tensor] = {}
    for mod, (a, b) in factors.items():
        # one unbind per factor (views of contiguous rows) instead of two indexing ops per layer
        for layer, (a_l, b_l) in enumerate(zip(a[index].contiguous().unbind(0), b[index].contiguous().unbind(0), strict=True)):
            prefix = "base_model.model." + shape_paths[mod].format(l=layer)
            out[f"{prefix}.lora_A.weight"] = a_l
            out[f"{prefix}.lora_B.weight"] = b_l
    return out


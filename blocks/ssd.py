"""The Mamba-2 mixer (SSD layer) with mamba_ssm's parameter names, layouts and initialisation."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archspec.blocks.cache import Mamba2Cache
from archspec.blocks.norm import RMSNormGated
from archspec.blocks.packing import check_cu_seqlens
from archspec.kernels import ssd_scan, ssd_step
from archspec.kernels.conv import MAX_D_CONV, causal_conv1d

SSD_BACKENDS = ("auto", "triton", "torch")


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer: in_proj -> (z, xBC, dt); causal depthwise conv + SiLU on xBC; SSD scan; gated RMSNorm
    with z; out_proj. Input/output (batch, seqlen, d_model).

    Parameters (names and layouts of mamba_ssm's Mamba2): in_proj (d_model -> 2*d_inner + 2*ngroups*d_state +
    nheads, output order z, x, B, C, dt); conv1d (depthwise, conv_dim = d_inner + 2*ngroups*d_state channels,
    kernel d_conv, padding d_conv - 1); dt_bias (nheads,); A_log (nheads,) with A = -exp(A_log); D (nheads,) or
    (d_inner,) when D_has_hdim; norm (gated RMSNorm over d_inner, group size d_inner / ngroups) when rmsnorm;
    out_proj (d_inner -> d_model). d_inner = expand * d_model, nheads = d_inner / head_dim.

    dt_limit clamps the step in the scan and in the one-token decode step alike, so decoding continues exactly
    what the forward pass computes; mamba_ssm 2.3's Mamba2.step skips the clamp (same result with the default
    (0, inf) limit).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: float = 2,
        head_dim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
        backend: str = "auto",
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        d_inner = int(expand * d_model)
        if d_model <= 0 or d_inner != expand * d_model or d_inner <= 0:
            raise ValueError(f"expand: expected expand * d_model to be a positive integer, got {expand} * {d_model}")
        if head_dim <= 0 or d_inner % head_dim != 0:
            raise ValueError(f"head_dim: expected a divisor of d_inner = expand * d_model = {d_inner}, got {head_dim}")
        nheads = d_inner // head_dim
        if ngroups <= 0 or nheads % ngroups != 0:
            raise ValueError(f"ngroups: expected a divisor of nheads = d_inner / head_dim = {nheads}, got {ngroups}")
        if d_state <= 0:
            raise ValueError(f"d_state: expected a positive integer, got {d_state}")
        if not 1 <= d_conv <= MAX_D_CONV:
            raise ValueError(f"d_conv: expected an integer from 1 to {MAX_D_CONV} (the conv kernel's limit), "
                             f"got {d_conv}")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range: expected 0 < low <= high, got {A_init_range}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min/dt_max: expected 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if backend not in SSD_BACKENDS:
            raise ValueError(f"backend: expected one of {SSD_BACKENDS}, got {backend!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.head_dim, self.nheads, self.ngroups = d_inner, head_dim, nheads, ngroups
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.A_init_range, self.dt_min, self.dt_max, self.dt_init_floor = A_init_range, dt_min, dt_max, dt_init_floor
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.chunk_size, self.backend, self.layer_idx = chunk_size, backend, layer_idx

        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.dt_bias = nn.Parameter(torch.empty(nheads, **factory))
        self.A_log = nn.Parameter(torch.empty(nheads, **factory))
        self.D = nn.Parameter(torch.empty(d_inner if D_has_hdim else nheads, device=device))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = (RMSNormGated(d_inner, eps=1e-5, group_size=d_inner // ngroups,
                                  norm_before_gate=norm_before_gate, **factory) if rmsnorm else None)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **factory)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """mamba_ssm's initialisation of dt_bias, A_log and D (the submodules reset their own parameters).

        dt ~ exp(U(log dt_min, log dt_max)) floored at dt_init_floor, dt_bias = softplus^-1(dt);
        A ~ U(A_init_range), A_log = log(A); D = 1.
        """
        device = self.dt_bias.device
        log_lo, log_hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand(self.nheads, device=device) * (log_hi - log_lo) + log_lo)
        dt = dt.clamp(min=self.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A = torch.empty(self.nheads, device=device).uniform_(*self.A_init_range)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    def init_cache(self, batch_size: int, max_seqlen: int, device=None, dtype=None) -> Mamba2Cache:
        """Zero state for `batch_size` sequences (max_seqlen is irrelevant: the state has a fixed size).

        conv_state in `dtype` (default: the conv weight's dtype); ssm_state always float32.
        """
        device = self.conv1d.weight.device if device is None else device
        dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.nheads, self.head_dim, self.d_state, device=device,
                                dtype=torch.float32)
        return Mamba2Cache(conv_state=conv_state, ssm_state=ssm_state)

    def forward(
        self, u: torch.Tensor, cache: Mamba2Cache | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """u (batch, seqlen, d_model) -> (batch, seqlen, d_model).

        cache: continue from and update a decode state (seqlen 1: one recurrent step; longer: a chunk).
        cu_seqlens: (nseqs + 1,) offsets of sequences packed along seqlen (batch 1, no cache); the conv and
        the SSM state restart at every sequence start; empty sequences (repeated offsets) are allowed.
        """
        batch, seqlen, _ = u.shape
        if cu_seqlens is not None:
            if cache is not None:
                raise ValueError("cu_seqlens: packed sequences cannot be combined with a decode cache")
            check_cu_seqlens(cu_seqlens, batch, seqlen)
        zxbcdt = self.in_proj(u)
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if cache is not None and seqlen == 1:
            y = self._step(z[:, 0], xBC[:, 0], dt[:, 0], cache)[:, None]
        else:
            y = self._scan(z, xBC, dt, cache, cu_seqlens)
        if cache is not None:
            cache.seqlen_offset += seqlen
        y = y.reshape(batch, seqlen, self.d_inner)
        if self.norm is not None:
            y = self.norm(y, z)
        return self.out_proj(y)

    def _A(self) -> torch.Tensor:
        """A = -exp(A_log), (nheads,) in float32 (float64 for a float64 model)."""
        return -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

    def _D(self) -> torch.Tensor:
        return self.D.view(self.nheads, self.head_dim) if self.D_has_hdim else self.D

    def _split_xBC(self, xBC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xBC (..., conv_dim) -> x (..., nheads, head_dim), B and C (..., ngroups, d_state)."""
        gs = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_inner, gs, gs], dim=-1)
        return (x.unflatten(-1, (self.nheads, self.head_dim)), B.unflatten(-1, (self.ngroups, self.d_state)),
                C.unflatten(-1, (self.ngroups, self.d_state)))

    def _conv(self, xBC: torch.Tensor, cache: Mamba2Cache | None, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
        """Causal depthwise conv + SiLU over xBC (batch, seqlen, conv_dim) -> (batch, seqlen, conv_dim) with unit
        last stride; with a cache, continues from and updates cache.conv_state."""
        weight, bias = self.conv1d.weight[:, 0, :], self.conv1d.bias
        if cache is None:
            return causal_conv1d(xBC, weight, bias, activation="silu", cu_seqlens=cu_seqlens, backend=self.backend)
        history = torch.cat([cache.conv_state.transpose(1, 2).to(xBC.dtype), xBC], dim=1)
        out = causal_conv1d(history[:, 1:], weight, bias, activation="silu", backend=self.backend)
        cache.conv_state.copy_(history[:, -self.d_conv:].transpose(1, 2))
        return out[:, self.d_conv - 1:]

    def _scan(self, z, xBC, dt, cache: Mamba2Cache | None, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
        x, B, C = self._split_xBC(self._conv(xBC, cache, cu_seqlens))
        A = self._A()
        result = ssd_scan(
            x, dt, A, B, C, self.chunk_size, D=self._D(),
            z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.head_dim)),
            dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit,
            initial_states=None if cache is None else cache.ssm_state,
            cu_seqlens=cu_seqlens,
            return_final_states=cache is not None, backend=self.backend,
        )
        if cache is None:
            return result
        y, final_states = result
        cache.ssm_state.copy_(final_states)
        return y

    def _step(self, z: torch.Tensor, xBC: torch.Tensor, dt: torch.Tensor, cache: Mamba2Cache) -> torch.Tensor:
        """One token: z (batch, d_inner), xBC (batch, conv_dim), dt (batch, nheads) -> (batch, nheads, head_dim)."""
        conv_state = cache.conv_state
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = xBC.to(conv_state.dtype)
        dtype = torch.promote_types(conv_state.dtype, torch.float32)
        conv = (conv_state.to(dtype) * self.conv1d.weight[:, 0, :].to(dtype)).sum(dim=-1)
        if self.conv1d.bias is not None:
            conv = conv + self.conv1d.bias.to(dtype)
        x, B, C = self._split_xBC(F.silu(conv).to(xBC.dtype))
        A = self._A()
        return ssd_step(
            cache.ssm_state, x, dt, A, B, C, D=self._D(),
            z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.head_dim)),
            dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, nheads={self.nheads}, "
                f"head_dim={self.head_dim}, ngroups={self.ngroups}, chunk_size={self.chunk_size}, "
                f"backend={self.backend!r}")

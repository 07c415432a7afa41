"""Triton flash attention with a fused forward-mode tangent (JVP) and a backward through it.

Math (docs/jvp_attention.md §1), per (batch, head), with s the softmax scale:

    S = s Q K^T,  P = softmax_row(S),  O = P V,  LSE = log rowsum(exp S)
    Ṡ = s (Q̇ K^T + Q K̇^T),  μ = rowsum(P ∘ Ṡ)  (tangent of LSE),  Ȯ = (P ∘ Ṡ) V + P V̇ − μ ∘ O

Kernels (all tiles fp32 accumulators, ``tl.dot`` on input-dtype tiles):

* ``_fwd_kernel``: one program per (query block, batch*head), loops over key blocks.
  MODE = PRIMAL: FlashAttention-2 forward (O, LSE).
  MODE = FUSED: online JVP (doc §1.1): O, Ȯ, LSE, μ in one pass, 6 matmuls per tile.
  MODE = TANGENT: Ȯ, μ given O and LSE (exact P = exp(S − LSE), no rescaling), 5 matmuls.
* ``_bwd_preprocess_kernel``: row sums Δ + E = rowsum(Ō ∘ O) + rowsum(G ∘ Ȯ), δ = rowsum(G ∘ O).
* ``_bwd_kv_kernel``: one program per key block (column parallel): K̄, V̄, K̇̄, V̇̄ (12
  matmuls a tile; for d = 128 split into a K̄, K̇̄ launch and a V̄, V̇̄ launch, which recompute
  P and Ṡ but hold half the fp32 accumulators).
* ``_bwd_q_kernel``: one program per query block (row parallel): Q̄, Q̇̄ (9 matmuls a tile).
  No atomics. With G = None both reduce to the FlashAttention-2 backward.

Fp64 inputs run only in the interpreter (exact tests); fp32 dots use IEEE fp32, not TF32.

The primal softmax uses exp2 with s·log2(e) folded into the scores; the tangent Ṡ uses the
plain s. LSE is kept in base 2 inside this module (``lse2 = LSE / ln 2``).

Layout: (B, H, N, d) with arbitrary strides (the last dimension must have stride 1; other
inputs are copied once). Nq may differ from Nk; causal masking is top-left aligned like
PyTorch's SDPA (query i sees keys j <= i). Head dims other than 16/32/64/128/256 are padded
to the next power of two with masked loads.

On CPU tensors the kernels run only in the Triton interpreter: ``TRITON_INTERPRET=1`` must be
set before this module is first imported.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = 1.4426950408889634


# forward kernel modes (constexpr globals so the jit'ed code can read them)
PRIMAL, FUSED, TANGENT = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
# parts of the key/value-block backward
KV_BOTH, KV_KEYS, KV_VALUES = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
MAX_HEAD_DIM = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# True inside tvmlib.kernels.ahead.compile_ahead: launches only compile (Triton's warmup)
COMPILE_ONLY: ContextVar[bool] = ContextVar("tvmlib_attention_compile_only", default=False)


# ----------------------------------------------------------------------------------------------
# small device helpers


@triton.jit
def _head(ptr, off_b, off_h, s_b, s_h):
    """Base pointer of one (batch, head) slice; 64-bit offsets for large tensors."""
    return ptr + off_b.to(tl.int64) * s_b + off_h.to(tl.int64) * s_h


@triton.jit
def _heads(A, B, C, E, off_b, off_h, s_ab, s_ah, s_bb, s_bh, s_cb, s_ch, s_eb, s_eh):
    """Base pointers of head (b, h) in four (B, H, N, d) tensors."""
    return (_head(A, off_b, off_h, s_ab, s_ah), _head(B, off_b, off_h, s_bb, s_bh),
            _head(C, off_b, off_h, s_cb, s_ch), _head(E, off_b, off_h, s_eb, s_eh))


@triton.jit
def _load_rows(base, rows, n_rows, s_row, cols, D: tl.constexpr, HEAD_D: tl.constexpr,
               CHECK_ROWS: tl.constexpr):
    """Load a (len(rows), HEAD_D) tile; rows >= n_rows and columns >= D read as 0."""
    ptrs = base + rows[:, None] * s_row + cols[None, :]
    if CHECK_ROWS:
        if D == HEAD_D:
            x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < D), other=0.0)
    else:
        if D == HEAD_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=cols[None, :] < D, other=0.0)
    return x


@triton.jit
def _store_rows(base, x, rows, n_rows, s_row, cols, D: tl.constexpr, HEAD_D: tl.constexpr,
                CHECK_ROWS: tl.constexpr):
    ptrs = base + rows[:, None] * s_row + cols[None, :]
    if CHECK_ROWS:
        if D == HEAD_D:
            tl.store(ptrs, x, mask=rows[:, None] < n_rows)
        else:
            tl.store(ptrs, x, mask=(rows[:, None] < n_rows) & (cols[None, :] < D))
    else:
        if D == HEAD_D:
            tl.store(ptrs, x)
        else:
            tl.store(ptrs, x, mask=cols[None, :] < D)


@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b, accumulating in acc's dtype (fp32, or fp64 for fp64 inputs)."""
    return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def _scales(scale, scale_log2, SCALES, SCALES_IN_MEMORY: tl.constexpr):
    """(s, s·log2 e). Float arguments are fp32; fp64 inputs read exact fp64 values from memory."""
    s1 = scale
    s2 = scale_log2
    if SCALES_IN_MEMORY:
        s1 = tl.load(SCALES)
        s2 = tl.load(SCALES + 1)
    return s1, s2


@triton.jit
def _program_rows(H, N, BLOCK: tl.constexpr):
    """This program's block of rows (queries or keys) and head:
    (first row, b·H + h, b, h, row indices, row in range)."""
    start = tl.program_id(0) * BLOCK
    bh = tl.program_id(1)
    offs = start + tl.arange(0, BLOCK)
    return start, bh, bh // H, bh % H, offs, offs < N


@triton.jit
def _causal_row_bounds(start_m, N_K, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    """Key range of a query block: [0, n_full) needs no mask, [n_full, hi) needs one."""
    if CAUSAL:
        hi = tl.minimum(N_K, start_m + BLOCK_M)
        n_full = tl.minimum((start_m + 1) // BLOCK_N, N_K // BLOCK_N) * BLOCK_N
    else:
        hi = N_K
        n_full = (N_K // BLOCK_N) * BLOCK_N
    return n_full, hi


# ----------------------------------------------------------------------------------------------
# forward


@triton.jit
def _fwd_tiles(acc_o, acc_t, m, l, r, q, tq, lse2,
               Kh, Vh, TKh, TVh, s_kn, s_vn, s_tkn, s_tvn,
               offs_m, offs_d, lo, hi, N_K, scale, scale_log2,
               MODE: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr,
               D: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_N: tl.constexpr,
               PRECISION: tl.constexpr):
    """Key blocks [lo, hi) of one query block; MASK adds the tail / causal mask (doc §1.1)."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(Kh, offs_n, N_K, s_kn, offs_d, D, HEAD_D, MASK)  # (BN, HD)
        v = _load_rows(Vh, offs_n, N_K, s_vn, offs_d, D, HEAD_D, MASK)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # (BM, BN), log2 units
        if MASK:
            keep = offs_n[None, :] < N_K
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(keep, s, float("-inf"))
        if MODE == TANGENT:  # exact probabilities from the saved LSE
            p = tl.exp2(s - lse2[:, None])
        else:  # online softmax: rescale the running state by alpha = exp(m - m')
            m_new = tl.maximum(m, tl.max(s, 1))
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys masked so far
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            acc_o = _mma(p.to(v.dtype), v, acc_o * alpha[:, None], PRECISION)
            if MODE == FUSED:
                r = r * alpha
                acc_t = acc_t * alpha[:, None]
            m = m_new
        if MODE != PRIMAL:
            tk = _load_rows(TKh, offs_n, N_K, s_tkn, offs_d, D, HEAD_D, MASK)
            tv = _load_rows(TVh, offs_n, N_K, s_tvn, offs_d, D, HEAD_D, MASK)
            sd = tl.dot(tq, tl.trans(k), input_precision=PRECISION)
            sd = _mma(q, tl.trans(tk), sd, PRECISION) * scale  # Ṡ (BM, BN)
            psd = p * sd  # masked entries have p = 0 and finite Ṡ
            r += tl.sum(psd, 1)
            # B + C share one accumulator: (P̃ ∘ Ṡ) V + P̃ V̇
            acc_t = _mma(psd.to(v.dtype), v, acc_t, PRECISION)
            acc_t = _mma(p.to(tv.dtype), tv, acc_t, PRECISION)
    return acc_o, acc_t, m, l, r


@triton.jit
def _fwd_kernel(
    Q, K, V, TQ, TK, TV, O, TO, LSE2, MU, SCALES,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
    s_tqb, s_tqh, s_tqn, s_tkb, s_tkh, s_tkn, s_tvb, s_tvh, s_tvn,
    s_ob, s_oh, s_on, s_tob, s_toh, s_ton,
    H, N_Q, N_K, scale, scale_log2,
    MODE: tl.constexpr, CAUSAL: tl.constexpr, D: tl.constexpr, HEAD_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CHECK_M: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, SCALES_IN_MEMORY: tl.constexpr,
):
    start_m, bh, off_b, off_h, offs_m, row_ok = _program_rows(H, N_Q, BLOCK_M)
    scale, scale_log2 = _scales(scale, scale_log2, SCALES, SCALES_IN_MEMORY)
    offs_d = tl.arange(0, HEAD_D)

    q = _load_rows(_head(Q, off_b, off_h, s_qb, s_qh), offs_m, N_Q, s_qn, offs_d, D, HEAD_D,
                   CHECK_M)  # (BM, HD)
    Kh, Vh, TKh, TVh = _heads(K, V, TK, TV, off_b, off_h,
                              s_kb, s_kh, s_vb, s_vh, s_tkb, s_tkh, s_tvb, s_tvh)
    if MODE == PRIMAL:
        tq = q  # unused
    else:
        tq = _load_rows(_head(TQ, off_b, off_h, s_tqb, s_tqh), offs_m, N_Q, s_tqn, offs_d, D,
                        HEAD_D, CHECK_M)
    if MODE == TANGENT:
        lse2 = tl.load(LSE2 + bh * N_Q + offs_m, mask=row_ok, other=0.0)
    else:
        lse2 = tl.zeros([BLOCK_M], dtype=ACC)  # unused

    m = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    l = tl.zeros([BLOCK_M], dtype=ACC)
    r = tl.zeros([BLOCK_M], dtype=ACC)
    acc_o = tl.zeros([BLOCK_M, HEAD_D], dtype=ACC)
    acc_t = tl.zeros([BLOCK_M, HEAD_D], dtype=ACC)

    n_full, hi = _causal_row_bounds(start_m, N_K, CAUSAL, BLOCK_M, BLOCK_N)
    acc_o, acc_t, m, l, r = _fwd_tiles(
        acc_o, acc_t, m, l, r, q, tq, lse2, Kh, Vh, TKh, TVh, s_kn, s_vn, s_tkn, s_tvn,
        offs_m, offs_d, 0, n_full, N_K, scale, scale_log2,
        MODE, False, CAUSAL, D, HEAD_D, BLOCK_N, PRECISION)
    acc_o, acc_t, m, l, r = _fwd_tiles(
        acc_o, acc_t, m, l, r, q, tq, lse2, Kh, Vh, TKh, TVh, s_kn, s_vn, s_tkn, s_tvn,
        offs_m, offs_d, n_full, hi, N_K, scale, scale_log2,
        MODE, True, CAUSAL, D, HEAD_D, BLOCK_N, PRECISION)

    Oh = _head(O, off_b, off_h, s_ob, s_oh)
    TOh = _head(TO, off_b, off_h, s_tob, s_toh)
    if MODE == TANGENT:
        o = _load_rows(Oh, offs_m, N_Q, s_on, offs_d, D, HEAD_D, CHECK_M).to(ACC)
        to = acc_t - r[:, None] * o
        _store_rows(TOh, to.to(TO.dtype.element_ty), offs_m, N_Q, s_ton, offs_d, D, HEAD_D,
                    CHECK_M)
        tl.store(MU + bh * N_Q + offs_m, r, mask=row_ok)
    else:
        l_safe = tl.where(l > 0.0, l, 1.0)  # a row with every key masked outputs 0
        o = acc_o / l_safe[:, None]
        _store_rows(Oh, o.to(O.dtype.element_ty), offs_m, N_Q, s_on, offs_d, D, HEAD_D, CHECK_M)
        tl.store(LSE2 + bh * N_Q + offs_m, m + tl.log2(l_safe), mask=row_ok)
        if MODE == FUSED:
            mu = r / l_safe
            to = acc_t / l_safe[:, None] - mu[:, None] * o
            _store_rows(TOh, to.to(TO.dtype.element_ty), offs_m, N_Q, s_ton, offs_d, D, HEAD_D,
                        CHECK_M)
            tl.store(MU + bh * N_Q + offs_m, mu, mask=row_ok)


# ----------------------------------------------------------------------------------------------
# backward


@triton.jit
def _bwd_preprocess_kernel(
    O, TO, GO, GT, DSUM, DELT,
    s_ob, s_oh, s_on, s_tob, s_toh, s_ton, s_gob, s_goh, s_gon, s_gtb, s_gth, s_gtn,
    H, N_Q,
    HAS_GO: tl.constexpr, HAS_GT: tl.constexpr, D: tl.constexpr, HEAD_D: tl.constexpr,
    BLOCK_M: tl.constexpr, ACC: tl.constexpr,
):
    """DSUM = Δ + E = rowsum(Ō ∘ O) + rowsum(G ∘ Ȯ),  DELT = δ = rowsum(G ∘ O)  (doc §1.3)."""
    start_m, bh, off_b, off_h, offs_m, row_ok = _program_rows(H, N_Q, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    o = _load_rows(_head(O, off_b, off_h, s_ob, s_oh), offs_m, N_Q, s_on, offs_d, D, HEAD_D,
                   True).to(ACC)
    dsum = tl.zeros([BLOCK_M], dtype=ACC)
    if HAS_GO:
        go = _load_rows(_head(GO, off_b, off_h, s_gob, s_goh), offs_m, N_Q, s_gon, offs_d, D,
                        HEAD_D, True).to(ACC)
        dsum += tl.sum(go * o, 1)
    if HAS_GT:
        gt = _load_rows(_head(GT, off_b, off_h, s_gtb, s_gth), offs_m, N_Q, s_gtn, offs_d, D,
                        HEAD_D, True).to(ACC)
        to = _load_rows(_head(TO, off_b, off_h, s_tob, s_toh), offs_m, N_Q, s_ton, offs_d, D,
                        HEAD_D, True).to(ACC)
        dsum += tl.sum(gt * to, 1)
        tl.store(DELT + bh * N_Q + offs_m, tl.sum(gt * o, 1), mask=row_ok)
    tl.store(DSUM + bh * N_Q + offs_m, dsum, mask=row_ok)


@triton.jit
def _bwd_kv_tiles(dk, dv, dtk, dtv, k, v, tk, tv,
                  Qh, TQh, GOh, GTh, s_qn, s_tqn, s_gon, s_gtn, LSE2h, MUh, DSUMh, DELTh,
                  offs_n, offs_d, lo, hi, N_Q, scale, scale_log2,
                  HAS_GO: tl.constexpr, HAS_GT: tl.constexpr, MASK: tl.constexpr,
                  D: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr,
                  CHECK_M: tl.constexpr, PRECISION: tl.constexpr, PART: tl.constexpr):
    """Query blocks [lo, hi) for one key block, in transposed (key-major) tiles (BN, BM).

    PART (with G): KV_BOTH accumulates all four gradients; KV_KEYS only K̄, K̇̄ and KV_VALUES
    only V̄, V̇̄ (two launches that each recompute P and Ṡ, but hold half the accumulators).
    """
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N_Q
        q = _load_rows(Qh, offs_m, N_Q, s_qn, offs_d, D, HEAD_D, CHECK_M)  # (BM, HD)
        lse2 = tl.load(LSE2h + offs_m, mask=row_ok, other=float("inf"))  # padded rows: P = 0
        dsum = tl.load(DSUMh + offs_m, mask=row_ok, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale_log2  # S^T (BN, BM)
        if MASK:
            s_t = tl.where(offs_m[None, :] >= offs_n[:, None], s_t, float("-inf"))
        p_t = tl.exp2(s_t - lse2[None, :])
        if HAS_GT:
            tq = _load_rows(TQh, offs_m, N_Q, s_tqn, offs_d, D, HEAD_D, CHECK_M)
            gt = _load_rows(GTh, offs_m, N_Q, s_gtn, offs_d, D, HEAD_D, CHECK_M)
            mu = tl.load(MUh + offs_m, mask=row_ok, other=0.0)
            delt = tl.load(DELTh + offs_m, mask=row_ok, other=0.0)
            sd_t = tl.dot(tk, tl.trans(q), input_precision=PRECISION)
            sd_t = _mma(k, tl.trans(tq), sd_t, PRECISION) * scale  # Ṡ^T
            c_t = sd_t - mu[None, :]  # Ṡ − μ
            if HAS_GO:
                go = _load_rows(GOh, offs_m, N_Q, s_gon, offs_d, D, HEAD_D, CHECK_M)
            else:
                go = gt  # unused
            if PART != KV_VALUES:
                dp_t = tl.dot(tv, tl.trans(gt), input_precision=PRECISION)  # (G V̇^T)^T
                if HAS_GO:
                    dp_t = _mma(v, tl.trans(go), dp_t, PRECISION)  # + (Ō V^T)^T
                dpt_t = tl.dot(v, tl.trans(gt), input_precision=PRECISION)  # (G V^T)^T
                dsd_t = p_t * (dpt_t - delt[None, :])  # dṠ^T
                ds_t = p_t * (dp_t - dsum[None, :]) + dsd_t * c_t  # dS^T
                dsd_c = dsd_t.to(q.dtype)
                dk = _mma(ds_t.to(q.dtype), q, dk, PRECISION)
                dk = _mma(dsd_c, tq, dk, PRECISION)
                dtk = _mma(dsd_c, q, dtk, PRECISION)
            if PART != KV_KEYS:
                p_c = p_t.to(gt.dtype)
                if HAS_GO:
                    dv = _mma(p_c, go, dv, PRECISION)
                dv = _mma((p_t * c_t).to(gt.dtype), gt, dv, PRECISION)
                dtv = _mma(p_c, gt, dtv, PRECISION)
        else:  # FlashAttention-2 backward
            go = _load_rows(GOh, offs_m, N_Q, s_gon, offs_d, D, HEAD_D, CHECK_M)
            dp_t = tl.dot(v, tl.trans(go), input_precision=PRECISION)
            ds_t = p_t * (dp_t - dsum[None, :])
            dk = _mma(ds_t.to(q.dtype), q, dk, PRECISION)
            dv = _mma(p_t.to(go.dtype), go, dv, PRECISION)
    return dk, dv, dtk, dtv


@triton.jit
def _bwd_kv_kernel(
    Q, K, V, TQ, TK, TV, GO, GT, LSE2, MU, DSUM, DELT, DK, DV, DTK, DTV, SCALES,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
    s_tqb, s_tqh, s_tqn, s_tkb, s_tkh, s_tkn, s_tvb, s_tvh, s_tvn,
    s_gob, s_goh, s_gon, s_gtb, s_gth, s_gtn, s_db, s_dh, s_dn,
    H, N_Q, N_K, scale, scale_log2,
    HAS_GO: tl.constexpr, HAS_GT: tl.constexpr, CAUSAL: tl.constexpr,
    D: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CHECK_M: tl.constexpr, CHECK_N: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr, SCALES_IN_MEMORY: tl.constexpr, PART: tl.constexpr,
):
    """K̄ = s(dS^T Q + dṠ^T Q̇), K̇̄ = s dṠ^T Q, V̄ = P^T Ō + (P∘(Ṡ−μ))^T G, V̇̄ = P^T G.

    PART selects which of them this launch computes (see ``_bwd_kv_tiles``).
    """
    start_n, bh, off_b, off_h, offs_n, _ = _program_rows(H, N_K, BLOCK_N)
    scale, scale_log2 = _scales(scale, scale_log2, SCALES, SCALES_IN_MEMORY)
    offs_d = tl.arange(0, HEAD_D)
    k = _load_rows(_head(K, off_b, off_h, s_kb, s_kh), offs_n, N_K, s_kn, offs_d, D, HEAD_D,
                   CHECK_N)  # (BN, HD)
    v = _load_rows(_head(V, off_b, off_h, s_vb, s_vh), offs_n, N_K, s_vn, offs_d, D, HEAD_D,
                   CHECK_N)
    if HAS_GT:
        tk = _load_rows(_head(TK, off_b, off_h, s_tkb, s_tkh), offs_n, N_K, s_tkn, offs_d, D,
                        HEAD_D, CHECK_N)
        tv = _load_rows(_head(TV, off_b, off_h, s_tvb, s_tvh), offs_n, N_K, s_tvn, offs_d, D,
                        HEAD_D, CHECK_N)
    else:
        tk = k  # unused
        tv = v
    dk = tl.zeros([BLOCK_N, HEAD_D], dtype=ACC)
    dv = tl.zeros([BLOCK_N, HEAD_D], dtype=ACC)
    dtk = tl.zeros([BLOCK_N, HEAD_D], dtype=ACC)
    dtv = tl.zeros([BLOCK_N, HEAD_D], dtype=ACC)

    Qh, TQh, GOh, GTh = _heads(Q, TQ, GO, GT, off_b, off_h,
                               s_qb, s_qh, s_tqb, s_tqh, s_gob, s_goh, s_gtb, s_gth)
    rows = bh * N_Q
    if CAUSAL:  # query i sees key j iff j <= i: start at the block holding row start_n
        lo = (start_n // BLOCK_M) * BLOCK_M
        mid = tl.minimum(tl.cdiv(start_n + BLOCK_N - 1, BLOCK_M) * BLOCK_M, N_Q)
        mid = tl.maximum(mid, lo)
        dk, dv, dtk, dtv = _bwd_kv_tiles(
            dk, dv, dtk, dtv, k, v, tk, tv, Qh, TQh, GOh, GTh, s_qn, s_tqn, s_gon, s_gtn,
            LSE2 + rows, MU + rows, DSUM + rows, DELT + rows, offs_n, offs_d, lo, mid, N_Q,
            scale, scale_log2, HAS_GO, HAS_GT, True, D, HEAD_D, BLOCK_M, CHECK_M, PRECISION, PART)
    else:
        mid = 0
    dk, dv, dtk, dtv = _bwd_kv_tiles(
        dk, dv, dtk, dtv, k, v, tk, tv, Qh, TQh, GOh, GTh, s_qn, s_tqn, s_gon, s_gtn,
        LSE2 + rows, MU + rows, DSUM + rows, DELT + rows, offs_n, offs_d, mid, N_Q,
        N_Q, scale, scale_log2, HAS_GO, HAS_GT, False, D, HEAD_D, BLOCK_M, CHECK_M, PRECISION, PART)

    out_ty = DK.dtype.element_ty
    if PART != KV_VALUES:
        _store_rows(_head(DK, off_b, off_h, s_db, s_dh), (dk * scale).to(out_ty), offs_n, N_K,
                    s_dn, offs_d, D, HEAD_D, CHECK_N)
        if HAS_GT:
            _store_rows(_head(DTK, off_b, off_h, s_db, s_dh), (dtk * scale).to(out_ty), offs_n,
                        N_K, s_dn, offs_d, D, HEAD_D, CHECK_N)
    if PART != KV_KEYS:
        _store_rows(_head(DV, off_b, off_h, s_db, s_dh), dv.to(out_ty), offs_n, N_K, s_dn,
                    offs_d, D, HEAD_D, CHECK_N)
        if HAS_GT:
            _store_rows(_head(DTV, off_b, off_h, s_db, s_dh), dtv.to(out_ty), offs_n, N_K,
                        s_dn, offs_d, D, HEAD_D, CHECK_N)


@triton.jit
def _bwd_q_tiles(dq, dtq, q, tq, go, gt, lse2, mu, dsum, delt,
                 Kh, Vh, TKh, TVh, s_kn, s_vn, s_tkn, s_tvn,
                 offs_m, offs_d, lo, hi, N_K, scale, scale_log2,
                 HAS_GO: tl.constexpr, HAS_GT: tl.constexpr, MASK: tl.constexpr,
                 CAUSAL: tl.constexpr, D: tl.constexpr, HEAD_D: tl.constexpr,
                 BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Key blocks [lo, hi) for one query block (row-major tiles (BM, BN))."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(Kh, offs_n, N_K, s_kn, offs_d, D, HEAD_D, MASK)  # (BN, HD)
        v = _load_rows(Vh, offs_n, N_K, s_vn, offs_d, D, HEAD_D, MASK)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # (BM, BN)
        if MASK:
            keep = offs_n[None, :] < N_K
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(keep, s, float("-inf"))
        p = tl.exp2(s - lse2[:, None])
        if HAS_GT:
            tk = _load_rows(TKh, offs_n, N_K, s_tkn, offs_d, D, HEAD_D, MASK)
            tv = _load_rows(TVh, offs_n, N_K, s_tvn, offs_d, D, HEAD_D, MASK)
            sd = tl.dot(tq, tl.trans(k), input_precision=PRECISION)
            sd = _mma(q, tl.trans(tk), sd, PRECISION) * scale  # Ṡ
            dp = tl.dot(gt, tl.trans(tv), input_precision=PRECISION)  # G V̇^T
            if HAS_GO:
                dp = _mma(go, tl.trans(v), dp, PRECISION)  # + Ō V^T
            dpt = tl.dot(gt, tl.trans(v), input_precision=PRECISION)  # G V^T
            dsd = p * (dpt - delt[:, None])  # dṠ
            ds = p * (dp - dsum[:, None]) + dsd * (sd - mu[:, None])  # dS
            dsd_c = dsd.to(k.dtype)
            dq = _mma(ds.to(k.dtype), k, dq, PRECISION)
            dq = _mma(dsd_c, tk, dq, PRECISION)
            dtq = _mma(dsd_c, k, dtq, PRECISION)
        else:  # FlashAttention-2 backward
            dp = tl.dot(go, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - dsum[:, None])
            dq = _mma(ds.to(k.dtype), k, dq, PRECISION)
    return dq, dtq


@triton.jit
def _bwd_q_kernel(
    Q, K, V, TQ, TK, TV, GO, GT, LSE2, MU, DSUM, DELT, DQ, DTQ, SCALES,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
    s_tqb, s_tqh, s_tqn, s_tkb, s_tkh, s_tkn, s_tvb, s_tvh, s_tvn,
    s_gob, s_goh, s_gon, s_gtb, s_gth, s_gtn, s_db, s_dh, s_dn,
    H, N_Q, N_K, scale, scale_log2,
    HAS_GO: tl.constexpr, HAS_GT: tl.constexpr, CAUSAL: tl.constexpr,
    D: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CHECK_M: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr, SCALES_IN_MEMORY: tl.constexpr,
):
    """Q̄ = s(dS K + dṠ K̇),  Q̇̄ = s dṠ K  (doc §1.3)."""
    start_m, bh, off_b, off_h, offs_m, row_ok = _program_rows(H, N_Q, BLOCK_M)
    scale, scale_log2 = _scales(scale, scale_log2, SCALES, SCALES_IN_MEMORY)
    offs_d = tl.arange(0, HEAD_D)
    rows = bh * N_Q + offs_m
    q = _load_rows(_head(Q, off_b, off_h, s_qb, s_qh), offs_m, N_Q, s_qn, offs_d, D, HEAD_D,
                   CHECK_M)  # (BM, HD)
    lse2 = tl.load(LSE2 + rows, mask=row_ok, other=float("inf"))
    dsum = tl.load(DSUM + rows, mask=row_ok, other=0.0)
    if HAS_GO:
        go = _load_rows(_head(GO, off_b, off_h, s_gob, s_goh), offs_m, N_Q, s_gon, offs_d, D,
                        HEAD_D, CHECK_M)
    else:
        go = q  # unused
    if HAS_GT:
        tq = _load_rows(_head(TQ, off_b, off_h, s_tqb, s_tqh), offs_m, N_Q, s_tqn, offs_d, D,
                        HEAD_D, CHECK_M)
        gt = _load_rows(_head(GT, off_b, off_h, s_gtb, s_gth), offs_m, N_Q, s_gtn, offs_d, D,
                        HEAD_D, CHECK_M)
        mu = tl.load(MU + rows, mask=row_ok, other=0.0)
        delt = tl.load(DELT + rows, mask=row_ok, other=0.0)
    else:
        tq = q  # unused
        gt = q
        mu = dsum
        delt = dsum
    dq = tl.zeros([BLOCK_M, HEAD_D], dtype=ACC)
    dtq = tl.zeros([BLOCK_M, HEAD_D], dtype=ACC)

    Kh, Vh, TKh, TVh = _heads(K, V, TK, TV, off_b, off_h,
                              s_kb, s_kh, s_vb, s_vh, s_tkb, s_tkh, s_tvb, s_tvh)
    n_full, hi = _causal_row_bounds(start_m, N_K, CAUSAL, BLOCK_M, BLOCK_N)
    dq, dtq = _bwd_q_tiles(
        dq, dtq, q, tq, go, gt, lse2, mu, dsum, delt, Kh, Vh, TKh, TVh, s_kn, s_vn, s_tkn, s_tvn,
        offs_m, offs_d, 0, n_full, N_K, scale, scale_log2,
        HAS_GO, HAS_GT, False, CAUSAL, D, HEAD_D, BLOCK_N, PRECISION)
    dq, dtq = _bwd_q_tiles(
        dq, dtq, q, tq, go, gt, lse2, mu, dsum, delt, Kh, Vh, TKh, TVh, s_kn, s_vn, s_tkn, s_tvn,
        offs_m, offs_d, n_full, hi, N_K, scale, scale_log2,
        HAS_GO, HAS_GT, True, CAUSAL, D, HEAD_D, BLOCK_N, PRECISION)

    out_ty = DQ.dtype.element_ty
    _store_rows(_head(DQ, off_b, off_h, s_db, s_dh), (dq * scale).to(out_ty), offs_m, N_Q, s_dn,
                offs_d, D, HEAD_D, CHECK_M)
    if HAS_GT:
        _store_rows(_head(DTQ, off_b, off_h, s_db, s_dh), (dtq * scale).to(out_ty), offs_m, N_Q,
                    s_dn, offs_d, D, HEAD_D, CHECK_M)


# ----------------------------------------------------------------------------------------------
# launchers


@dataclass(frozen=True)
class Tiles:
    """Tile shape and launch options of one kernel (block_m: query rows, block_n: key rows)."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class AttentionConfig:
    """Tiles of the forward, the key/value-block backward and the query-block backward."""

    fwd: Tiles
    bwd_kv: Tiles
    bwd_q: Tiles
    split_kv: bool = False  # with a gradient for Ȯ: K̄, K̇̄ and V̄, V̇̄ in two launches


IEEE_TILES = Tiles(16, 16, 8, 2)  # fp32 / fp64 on a GPU (see default_config)


def interpreting() -> bool:
    """Whether the kernels were built for the Triton CPU interpreter (TRITON_INTERPRET=1)."""
    return not isinstance(_fwd_kernel, triton.runtime.jit.JITFunction)


def _release(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def interpreter_problem(triton_version: str, numpy_version: str) -> str | None:
    """Why the Triton CPU interpreter cannot run these kernels with these versions, or None.
    Triton 3.6's interpreter turns a loop bound into a one-element array and calls int() on
    it, which numpy 2.4 refuses (checked with a three-line kernel: numpy 2.3.5 runs it, 2.4.6
    does not); Triton 3.8 runs it (CI)."""
    if _release(triton_version) < (3, 7) and _release(numpy_version) >= (2, 4):
        return (f"the Triton {triton_version} CPU interpreter cannot run these kernels with "
                f"numpy {numpy_version}: it calls int() on one-element arrays, which numpy 2.4 "
                "refuses. Install numpy<2.4 or triton>=3.8, or use a GPU")
    return None


def default_config(head_d: int, dtype: torch.dtype = torch.bfloat16) -> AttentionConfig:
    """Tile sizes; 16-bit ones from a sweep on an H100 (``tvmlib.apps.bench.attention --sweep``).

    In the interpreter small tiles keep the cost low. fp32 and fp64 dots in IEEE precision have
    no tensor-core path: Triton unrolls each into FMA loops that grow with the tile, so larger
    tiles make huge code that compiles slowly and spills; 16 x 16 tiles with 8 warps compile
    several times faster than 32 x 32 with 4 for sm_90 (time the first call on a GPU with
    ``tvmlib.apps.bench.first_call``).
    """
    if interpreting():
        small = Tiles(32, 32, 4, 2)
        return AttentionConfig(small, small, small)
    if dtype in (torch.float32, torch.float64):
        return AttentionConfig(IEEE_TILES, IEEE_TILES, IEEE_TILES)
    if head_d <= 64:
        return AttentionConfig(fwd=Tiles(64, 64, 4, 3), bwd_kv=Tiles(32, 64, 4, 3),
                               bwd_q=Tiles(128, 64, 8, 3))
    return AttentionConfig(fwd=Tiles(128, 64, 8, 2), bwd_kv=Tiles(32, 128, 8, 3),
                           bwd_q=Tiles(128, 32, 8, 3), split_kv=True)


def padded_head_dim(d: int) -> int:
    """Tiles are powers of two (at least 16); other head dims are padded with masked loads."""
    return max(16, triton.next_power_of_2(d))


def _strides(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _unit_last(x: Tensor) -> Tensor:
    """Kernels index the head dimension with stride 1; copy other layouts once."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _precision(dtype: torch.dtype) -> str:
    """fp32 dots in true fp32 ("ieee", not TF32); 16-bit dots are exact products anyway."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scale_args(q: Tensor, scale: float | None) -> tuple[float, float, Tensor, bool]:
    """(s, s·log2 e, tensor with both, read-from-memory flag): fp64 needs exact constants."""
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if q.dtype == torch.float64:
        return s, s * LOG2E, torch.tensor([s, s * LOG2E], dtype=torch.float64,
                                          device=q.device), True
    return s, s * LOG2E, q, False


def check_inputs(q: Tensor, k: Tensor, v: Tensor, *tangents: Tensor | None) -> None:
    """Shapes, dtypes and devices the kernels accept; raises ValueError/RuntimeError otherwise."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{name} must be (B, H, N, d), got shape {tuple(x.shape)}")
    if q.shape[:2] != k.shape[:2] or k.shape != v.shape or q.shape[-1] != k.shape[-1]:
        raise ValueError("need q (B, H, Nq, d) and k, v (B, H, Nk, d) with one head dim; got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        raise ValueError(f"sequence lengths must be >= 1, got Nq={q.shape[-2]}, Nk={k.shape[-2]}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head dim {q.shape[-1]} > {MAX_HEAD_DIM} is not supported")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype of {_DTYPES}; got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    for name, x, ref in zip(("tq", "tk", "tv"), tangents, (q, k, v)):
        if x is not None and (x.shape != ref.shape or x.dtype != ref.dtype):
            raise ValueError(f"tangent {name} must match its primal: {tuple(ref.shape)} "
                             f"{ref.dtype}, got {tuple(x.shape)} {x.dtype}")
    devices = {x.device for x in (q, k, v, *tangents) if x is not None}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    if q.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            "tvmlib.kernels attention runs Triton kernels: it needs CUDA tensors, or the Triton "
            "CPU interpreter (set TRITON_INTERPRET=1 before importing tvmlib.kernels.jvp_attention)"
            f"; got {q.device} tensors without the interpreter")
    if interpreting():
        problem = interpreter_problem(triton.__version__, np.__version__)
        if problem:
            raise RuntimeError(problem)
    if q.dtype == torch.float64 and not interpreting():
        raise RuntimeError("fp64 runs only in the Triton CPU interpreter (for tests); use fp32, "
                           "fp16 or bf16 on the GPU")
    if q.dtype == torch.bfloat16 and interpreting():
        raise RuntimeError("bf16 is not supported by the Triton CPU interpreter (its tl.dot "
                           "multiplies bf16 bit patterns, triton-lang/triton#11584): use fp16, "
                           "fp32 or fp64 on CPU, or a GPU")


def _device_guard(x: Tensor):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else nullcontext()


def _launch(kernel, grid: tuple, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``; under ``COMPILE_ONLY`` the same variant is compiled
    (``warmup``) and nothing runs."""
    if COMPILE_ONLY.get():
        kernel.warmup(*args, grid=grid, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


def _forward(mode: tl.constexpr, q: Tensor, k: Tensor, v: Tensor, tq: Tensor | None,
             tk: Tensor | None, tv: Tensor | None, o: Tensor | None, lse2: Tensor | None,
             causal: bool, scale: float | None, config: AttentionConfig | None
             ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    check_inputs(q, k, v, tq, tk, tv)
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    B, H, n_q, d = q.shape
    n_k = k.shape[2]
    cfg = (config or default_config(d, q.dtype)).fwd
    stat = _stat_dtype(q.dtype)
    if mode == PRIMAL:
        tq, tk, tv = q, k, v  # never read
    else:
        tq, tk, tv = _unit_last(tq), _unit_last(tk), _unit_last(tv)
    if mode == TANGENT:
        to = torch.empty(B, H, n_q, d, dtype=q.dtype, device=q.device)
        mu = torch.empty(B, H, n_q, dtype=stat, device=q.device)
        o = _unit_last(o)
    else:
        o = torch.empty(B, H, n_q, d, dtype=q.dtype, device=q.device)
        lse2 = torch.empty(B, H, n_q, dtype=stat, device=q.device)
        to = torch.empty_like(o) if mode == FUSED else o
        mu = torch.empty_like(lse2) if mode == FUSED else lse2
    s, s_log2, scales, in_mem = _scale_args(q, scale)
    grid = (triton.cdiv(n_q, cfg.block_m), B * H)
    with _device_guard(q):
        _launch(
            _fwd_kernel, grid, q, k, v, tq, tk, tv, o, to, lse2, mu, scales,
            *_strides(q), *_strides(k), *_strides(v), *_strides(tq), *_strides(tk),
            *_strides(tv), *_strides(o), *_strides(to),
            H, n_q, n_k, s, s_log2,
            MODE=mode.value, CAUSAL=causal, D=d, HEAD_D=padded_head_dim(d),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, CHECK_M=n_q % cfg.block_m != 0,
            ACC=_acc(q.dtype), PRECISION=_precision(q.dtype), SCALES_IN_MEMORY=in_mem,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    if mode == PRIMAL:
        return o, None, lse2, None
    if mode == TANGENT:
        return o, to, lse2, mu
    return o, to, lse2, mu


def attention_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                      scale: float | None = None, config: AttentionConfig | None = None
                      ) -> tuple[Tensor, Tensor]:
    """FlashAttention-2 forward: (O (B, H, Nq, d), lse2 (B, H, Nq) = LSE / ln 2)."""
    o, _, lse2, _ = _forward(PRIMAL, q, k, v, None, None, None, None, None, causal, scale,
                             config)
    return o, lse2


def jvp_forward(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
                causal: bool = False, scale: float | None = None,
                config: AttentionConfig | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused online JVP forward (doc §1.1): (O, Ȯ, lse2 = LSE / ln 2, μ)."""
    for name, x in (("tq", tq), ("tk", tk), ("tv", tv)):
        if x is None:
            raise ValueError(f"jvp_forward needs every tangent; {name} is None (pass zeros)")
    return _forward(FUSED, q, k, v, tq, tk, tv, None, None, causal, scale, config)


def tangent_forward(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
                    o: Tensor, lse2: Tensor, causal: bool = False, scale: float | None = None,
                    config: AttentionConfig | None = None) -> tuple[Tensor, Tensor]:
    """Ȯ and μ given the primal O and lse2 from ``attention_forward`` (5 matmuls a tile)."""
    if o.shape != q.shape or lse2.shape != q.shape[:-1]:
        raise ValueError(f"o must be {tuple(q.shape)} and lse2 {tuple(q.shape[:-1])}; got "
                         f"{tuple(o.shape)} and {tuple(lse2.shape)}")
    _, to, _, mu = _forward(TANGENT, q, k, v, tq, tk, tv, o, lse2.contiguous(), causal, scale,
                            config)
    return to, mu


def attention_backward(q: Tensor, k: Tensor, v: Tensor, tq: Tensor | None, tk: Tensor | None,
                       tv: Tensor | None, o: Tensor, to: Tensor | None, lse2: Tensor,
                       mu: Tensor | None, g_o: Tensor | None, g_t: Tensor | None,
                       causal: bool = False, scale: float | None = None,
                       config: AttentionConfig | None = None) -> tuple[Tensor | None, ...]:
    """Gradients of <g_o, O> + <g_t, Ȯ> w.r.t. (q, k, v, tq, tk, tv) (doc §1.3).

    ``g_t=None``: FlashAttention-2 backward, tangent gradients are None (tangents, Ȯ and μ are
    not read). ``g_o=None``: only the path through Ȯ. Both None: all None.
    """
    if g_o is None and g_t is None:
        return (None,) * 6
    has_gt = g_t is not None
    check_inputs(q, k, v, *((tq, tk, tv) if has_gt else ()))
    if has_gt and (tq is None or tk is None or tv is None or to is None or mu is None):
        raise ValueError("a gradient for Ȯ needs the tangents tq, tk, tv, Ȯ and μ")
    for name, g in (("g_o", g_o), ("g_t", g_t)):
        if g is not None and g.shape != q.shape:
            raise ValueError(f"{name} must have shape {tuple(q.shape)}, got {tuple(g.shape)}")
    q, k, v, o = _unit_last(q), _unit_last(k), _unit_last(v), _unit_last(o)
    if has_gt:
        tq, tk, tv, to = _unit_last(tq), _unit_last(tk), _unit_last(tv), _unit_last(to)
        g_t = _unit_last(g_t.to(q.dtype))
        mu = mu.contiguous()
    else:
        tq, tk, tv, to, mu = q, k, v, o, lse2  # never read
    has_go = g_o is not None
    g_o = _unit_last(g_o.to(q.dtype)) if has_go else q  # never read when has_go is False
    g_t = g_t if has_gt else q
    lse2 = lse2.contiguous()
    B, H, n_q, d = q.shape
    n_k = k.shape[2]
    cfg = config or default_config(d, q.dtype)
    hd = padded_head_dim(d)
    acc, prec = _acc(q.dtype), _precision(q.dtype)
    stat = _stat_dtype(q.dtype)
    s, s_log2, scales, in_mem = _scale_args(q, scale)

    dsum = torch.empty(B, H, n_q, dtype=stat, device=q.device)
    delt = torch.empty_like(dsum) if has_gt else dsum
    dq = torch.empty(B, H, n_q, d, dtype=q.dtype, device=q.device)
    dk = torch.empty(B, H, n_k, d, dtype=q.dtype, device=q.device)
    dv = torch.empty_like(dk)
    dtq = torch.empty_like(dq) if has_gt else dq
    dtk = torch.empty_like(dk) if has_gt else dk
    dtv = torch.empty_like(dk) if has_gt else dv
    common = dict(HAS_GO=has_go, HAS_GT=has_gt, D=d, HEAD_D=hd, ACC=acc)
    in_strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(tq), *_strides(tk),
                  *_strides(tv), *_strides(g_o), *_strides(g_t))
    with _device_guard(q):
        pre = cfg.bwd_q
        _launch(
            _bwd_preprocess_kernel, (triton.cdiv(n_q, pre.block_m), B * H),
            o, to, g_o, g_t, dsum, delt,
            *_strides(o), *_strides(to), *_strides(g_o), *_strides(g_t), H, n_q,
            BLOCK_M=pre.block_m, num_warps=4 if not interpreting() else 1, **common)
        kv = cfg.bwd_kv
        parts = (KV_KEYS, KV_VALUES) if cfg.split_kv and has_gt else (KV_BOTH,)
        for part in parts:
            _launch(
                _bwd_kv_kernel, (triton.cdiv(n_k, kv.block_n), B * H),
                q, k, v, tq, tk, tv, g_o, g_t, lse2, mu, dsum, delt, dk, dv, dtk, dtv, scales,
                *in_strides, *_strides(dk), H, n_q, n_k, s, s_log2, CAUSAL=causal,
                BLOCK_M=kv.block_m, BLOCK_N=kv.block_n, CHECK_M=n_q % kv.block_m != 0,
                CHECK_N=n_k % kv.block_n != 0, PRECISION=prec, SCALES_IN_MEMORY=in_mem,
                PART=part.value, num_warps=kv.num_warps, num_stages=kv.num_stages, **common)
        qc = cfg.bwd_q
        _launch(
            _bwd_q_kernel, (triton.cdiv(n_q, qc.block_m), B * H),
            q, k, v, tq, tk, tv, g_o, g_t, lse2, mu, dsum, delt, dq, dtq, scales,
            *in_strides, *_strides(dq), H, n_q, n_k, s, s_log2, CAUSAL=causal,
            BLOCK_M=qc.block_m, BLOCK_N=qc.block_n, CHECK_M=n_q % qc.block_m != 0,
            PRECISION=prec, SCALES_IN_MEMORY=in_mem,
            num_warps=qc.num_warps, num_stages=qc.num_stages, **common)
    if not has_gt:
        return dq, dk, dv, None, None, None
    return dq, dk, dv, dtq, dtk, dtv

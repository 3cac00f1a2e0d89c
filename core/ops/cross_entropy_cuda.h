// Internal: the choice of linear_cross_entropy's row kernel on CUDA (core/ops/cross_entropy.cu),
// for tests and A/B runs. Only compiled with CUDA.
#pragma once

namespace kiln::cuda {

// The row kernel of a chunk of logits:
//  kScalar: one 2-byte (or wider) element per access, the row read three times.
//  kVector: 16-byte accesses, max and sum in one pass; the gradient pass reads the row again
//           (from L2 when it is still there): 16-bit logits with V % 8 == 0.
//  kShared: as kVector, but the first pass also keeps the row in shared memory and the gradient
//           pass reads it from there (one read of the row from DRAM): where V 16-bit logits fit
//           the device's shared memory per block.
//  kPipelined: the fused (gradient) chunk only: a persistent grid of resident blocks, each taking
//           rows blockIdx.x, + gridDim.x, ... double-buffered in shared memory: while a block
//           reduces row r and writes its gradient from shared memory, cp.async (16-byte, L2 only)
//           fills the other buffer with its next row, so DRAM does not idle between a block's
//           phases. Same threads per row and per-thread order as kShared: the same bits. Where two
//           rows do not fit shared memory, kShared runs (then kVector); loss-only chunks run
//           kVector.
// KILN_CE_ROWS (read once): "scalar", "vector", "pipelined", or unset / "shared" (the default
// since its GPU tests passed, 2026-12-06; where the row does not fit shared memory, kVector runs).
enum class CeRows { kEnv, kScalar, kVector, kShared, kPipelined };
// Forces the choice for later calls (tests); kEnv returns to KILN_CE_ROWS.
void set_ce_rows(CeRows rows);
// The row kernel the latest linear_cross_entropy chunk on this thread ran.
CeRows last_ce_rows();

}  // namespace kiln::cuda

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
// KILN_CE_ROWS (read once): "scalar", "vector", or unset / "shared" (the default since its GPU
// tests passed, 2026-12-06; where the row does not fit shared memory, kVector runs).
enum class CeRows { kEnv, kScalar, kVector, kShared };
// Forces the choice for later calls (tests); kEnv returns to KILN_CE_ROWS.
void set_ce_rows(CeRows rows);
// The row kernel the latest linear_cross_entropy chunk on this thread ran.
CeRows last_ce_rows();

}  // namespace kiln::cuda

// The row chunking of the column sums that fp8's transposing cast fuses in (core/ops/fp8.cu,
// KILN_FP8_FUSED_DBIAS=1; Transformer Engine's "cast_transpose_dbias"), written once for the
// launch and for a CPU test (fp8_colsum_test.cc): x (rows, cols) is cut into 32-row tiles; launch
// row y of `chunks` sums tiles y, y + chunks, y + 2 chunks, ... of its 32 columns into one f32
// partial per column (each thread 4 rows of a tile, then the block's 8 thread rows in order), and
// a second kernel adds the `chunks` partials of a column in chunk order and rounds once. The
// order depends on the shape only (not on the GPU), so the sums are deterministic. No CUDA headers.
#pragma once

#include <algorithm>
#include <cstdint>

namespace kiln::fp8_colsum {

constexpr int64_t kTile = 32;       // rows (and columns) of a tile, as the transposing cast's
constexpr int64_t kThreadRows = 8;  // thread rows of a block: each thread sums kTile / 8 rows
constexpr int64_t kMaxChunks = 64;  // partial rows at most: chunks * cols f32 of scratch

struct Plan {
  int64_t tiles = 0;   // ceil(rows / kTile)
  int64_t chunks = 0;  // launch rows (grid.y), 1 <= chunks <= min(tiles, kMaxChunks)
  // Tiles summed by launch row y: those t < tiles with t % chunks == y.
  int64_t tiles_of(int64_t y) const { return (tiles - y + chunks - 1) / chunks; }
  // The longest chain of f32 additions behind one column's sum (a thread's rows over its tiles,
  // the block's thread rows, the chunks): with the terms' magnitudes it bounds the f32 rounding
  // error, |error| <= chain * 2^-24 * sum |x| (to first order).
  int64_t chain() const { return tiles_of(0) * (kTile / kThreadRows) + kThreadRows + chunks; }
};

// The plan for x with `rows` rows (rows >= 1).
inline Plan plan(int64_t rows) {
  Plan p;
  p.tiles = (rows + kTile - 1) / kTile;
  p.chunks = std::max<int64_t>(1, std::min(p.tiles, kMaxChunks));
  return p;
}

}  // namespace kiln::fp8_colsum

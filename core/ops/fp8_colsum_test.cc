// CPU tests of the row chunking behind fp8's fused column sums (core/ops/fp8_colsum.h, used by the
// transposing cast in core/ops/fp8.cu): every 32-row tile of x summed by exactly one launch row,
// none idle, the grid within CUDA's limit, and the f32 addition chain the GPU test's error bound
// uses equal to a count of the additions the kernel performs for column 0.
#include "core/ops/fp8_colsum.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace kiln {
namespace {

using fp8_colsum::kMaxChunks;
using fp8_colsum::kThreadRows;
using fp8_colsum::kTile;

// The additions behind one column's sum, as the kernels run them: launch row y's thread rows
// each add their rows of y's tiles (tile t, rows t * kTile + i for i = thread row, + kThreadRows,
// ...), then thread row 0 adds the kThreadRows partials, then the chunks are added in order. The
// longest chain: a thread's additions (starting from 0) + kThreadRows + chunks.
int64_t counted_chain(int64_t rows, const fp8_colsum::Plan& p) {
  int64_t longest_thread = 0;
  for (int64_t y = 0; y < p.chunks; ++y) {
    for (int64_t ty = 0; ty < kThreadRows; ++ty) {
      int64_t adds = 0;
      for (int64_t t = y; t < p.tiles; t += p.chunks)
        for (int64_t i = ty; i < kTile; i += kThreadRows) adds += t * kTile + i < rows ? 1 : 0;
      longest_thread = std::max(longest_thread, adds);
    }
  }
  return longest_thread + kThreadRows + p.chunks;
}

TEST(Fp8Colsum, EveryTileInOneChunkAndTheChainBound) {
  std::vector<int64_t> rows_list = {1, 2, 16, 31, 32, 33, 63, 64, 65, 100, 1000, 2047, 2048, 2049};
  for (int64_t r = 4096; r <= (int64_t{1} << 20); r *= 4) rows_list.push_back(r + 16);
  rows_list.push_back(8192);  // GPT-2 1.5B's dY: 8 x 1024 rows
  for (int64_t rows : rows_list) {
    SCOPED_TRACE("rows " + std::to_string(rows));
    const fp8_colsum::Plan p = fp8_colsum::plan(rows);
    EXPECT_EQ(p.tiles, (rows + kTile - 1) / kTile);
    EXPECT_GE(p.tiles * kTile, rows);
    EXPECT_LT((p.tiles - 1) * kTile, rows);
    EXPECT_GE(p.chunks, 1);
    EXPECT_LE(p.chunks, std::min<int64_t>(p.tiles, kMaxChunks));
    EXPECT_LE(p.chunks, 65535) << "grid.y limit";
    std::vector<int> seen(p.tiles, 0);
    int64_t total = 0;
    for (int64_t y = 0; y < p.chunks; ++y) {
      int64_t mine = 0;
      for (int64_t t = y; t < p.tiles; t += p.chunks) {
        ++seen[t];
        ++mine;
      }
      EXPECT_EQ(mine, p.tiles_of(y)) << "launch row " << y;
      EXPECT_GE(mine, 1) << "launch row " << y << " sums nothing";
      total += mine;
    }
    EXPECT_EQ(total, p.tiles);
    for (int64_t t = 0; t < p.tiles; ++t) ASSERT_EQ(seen[t], 1) << "tile " << t;
    EXPECT_GE(p.chain(), counted_chain(rows, p)) << "the error bound's chain is too short";
    EXPECT_LE(p.chain(), counted_chain(rows, p) + kTile / kThreadRows) << "needlessly long";
  }
  // 8192 rows: 256 tiles in 64 chunks of 4 tiles; a chain of 16 + 8 + 64 f32 additions.
  EXPECT_EQ(fp8_colsum::plan(8192).chunks, 64);
  EXPECT_EQ(fp8_colsum::plan(8192).chain(), 88);
}

}  // namespace
}  // namespace kiln

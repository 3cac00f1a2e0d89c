// parallel::place_concat_range (box.h) against a brute-force answer: for every element of a flat
// range of a tensor-parallel rank's local tensor (its tp_boxes concatenated along the split
// dimension), the global coordinate the placed boxes give it must be the one computed here
// element by element (local multi-index -> the part it falls in -> that part's global place).
#include "parallel/box.h"

#include <gtest/gtest.h>

#include <vector>

#include "parallel/tp_plan.h"

namespace kiln::parallel {
namespace {

using Coord = std::vector<int64_t>;

Coord unravel(int64_t i, const std::vector<int64_t>& shape) {
  Coord x(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    x[d] = i % shape[d];
    i /= shape[d];
  }
  return x;
}

// The global coordinate of local element `i` (row-major), from the definition of the local tensor.
Coord expected_global(int64_t i, const std::vector<Box>& parts, int dim) {
  Coord local_shape = parts[0].length;
  local_shape[dim] = 0;
  for (const Box& p : parts) local_shape[dim] += p.length[dim];
  Coord x = unravel(i, local_shape);
  size_t p = 0;
  int64_t before = 0;
  while (x[dim] >= before + parts[p].length[dim]) before += parts[p++].length[dim];
  x[dim] -= before;
  for (size_t d = 0; d < x.size(); ++d) x[d] += parts[p].offset[d];
  return x;
}

// The global coordinate of element `k` of the range, from the placed boxes.
Coord placed_global(int64_t k, const std::vector<PlacedBox>& placed) {
  for (const PlacedBox& b : placed) {
    const int64_t v = box_volume(b.box);
    if (k < b.at || k >= b.at + v) continue;
    Coord x = unravel(k - b.at, b.box.length);
    for (size_t d = 0; d < x.size(); ++d) x[d] += b.box.offset[d];
    return x;
  }
  return {};
}

void check_all_ranges(const TpEntry& e, const Shape& global, int tp) {
  for (int rank = 0; rank < tp; ++rank) {
    const std::vector<Box> parts = tp_boxes(e, global, tp, rank);
    const int64_t n = shape_numel(global) / tp;
    for (int64_t start = 0; start < n; start += 1 + start / 3)
      for (int64_t count = 1; start + count <= n; count += 1 + count / 2) {
        const std::vector<PlacedBox> placed = place_concat_range(parts, e.dim, start, count);
        int64_t at = 0;
        for (const PlacedBox& b : placed) {  // back to back, in order, non-empty
          ASSERT_EQ(b.at, at);
          ASSERT_GT(box_volume(b.box), 0);
          ASSERT_TRUE(box_inside(b.box, global));
          at += box_volume(b.box);
        }
        ASSERT_EQ(at, count);
        for (int64_t k = 0; k < count; ++k)
          ASSERT_EQ(placed_global(k, placed), expected_global(start + k, parts, e.dim))
              << e.name << " rank " << rank << " range [" << start << ", +" << count << ") element "
              << k;
      }
  }
}

TEST(PlaceConcatRange, FusedColumnSplitThreePartitions) {
  // GPT-2's c_attn: (3C, C) split by head inside each of q, k, v.
  check_all_ranges({"c_attn.weight", TpStyle::kColumn, 0, 3}, {24, 5}, 2);
  check_all_ranges({"c_attn.weight", TpStyle::kColumn, 0, 3}, {24, 3}, 4);
  check_all_ranges({"c_attn.bias", TpStyle::kColumn, 0, 3}, {24}, 4);
}

TEST(PlaceConcatRange, RowAndColumnSplits) {
  check_all_ranges({"c_proj.weight", TpStyle::kRow, 1}, {5, 8}, 2);
  check_all_ranges({"c_fc.weight", TpStyle::kColumn, 0}, {8, 3}, 4);
  check_all_ranges({"wte.weight", TpStyle::kVocab, 0}, {12, 4}, 4);
}

TEST(PlaceConcatRange, PartitionsAlongAnInnerDimension) {
  // Not a layout kiln's models use, but the cut must hold for any dimension: parts along dim 1
  // (and 2) with earlier dimensions longer than 1 are cut into single slices first.
  check_all_ranges({"x", TpStyle::kRow, 1, 2}, {3, 8, 2}, 2);
  check_all_ranges({"y", TpStyle::kRow, 2, 3}, {2, 3, 6}, 2);
}

}  // namespace
}  // namespace kiln::parallel

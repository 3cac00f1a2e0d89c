// N-dimensional boxes (flat ranges cut into boxes, copy runs between box layouts) checked against
// brute force over every element, and the tensor-parallel slice of a fused weight worked out by
// hand: GPT-2's c_attn (3C, C) gives each rank its own heads' rows of q, of k and of v.
#include "parallel/tp_plan.h"

#include <gtest/gtest.h>

#include <vector>

#include "parallel/box.h"

namespace kiln::parallel {
namespace {

// Row-major index of point x in a tensor of `shape` (or of a box's extent).
int64_t flat_index(const std::vector<int64_t>& shape, const std::vector<int64_t>& x) {
  int64_t i = 0;
  for (size_t d = 0; d < shape.size(); ++d) i = i * shape[d] + x[d];
  return i;
}

// Every element of `b`, in row-major order within the box.
std::vector<std::vector<int64_t>> elements(const Box& b) {
  std::vector<std::vector<int64_t>> out;
  const int64_t n = box_volume(b);
  for (int64_t k = 0; k < n; ++k) {
    std::vector<int64_t> x(b.offset.size());
    int64_t r = k;
    for (size_t d = b.offset.size(); d-- > 0;) {
      x[d] = b.offset[d] + r % b.length[d];
      r /= b.length[d];
    }
    out.push_back(x);
  }
  return out;
}

TEST(Box, FlatRangesCutIntoAtMost2NMinus1BoxesInElementOrder) {
  for (const std::vector<int64_t>& shape :
       std::vector<std::vector<int64_t>>{{7}, {5, 7}, {3, 4, 5}, {2, 3, 2, 3}, {1, 6}, {4, 1}}) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    int checked = 0;
    for (int64_t start = 0; start <= numel; ++start) {
      for (int64_t count = 0; start + count <= numel; ++count) {
        std::vector<Box> boxes;
        flat_range_boxes(shape, start, count, &boxes);
        ASSERT_LE(boxes.size(), 2 * shape.size() - 1);
        // The boxes' elements, box after box, are exactly start, start + 1, ..., start + count - 1.
        int64_t next = start;
        for (const Box& b : boxes) {
          ASSERT_TRUE(box_inside(b, shape));
          ASSERT_GT(box_volume(b), 0);
          for (const auto& x : elements(b)) ASSERT_EQ(flat_index(shape, x), next++);
        }
        ASSERT_EQ(next, start + count);
        ++checked;
      }
    }
    EXPECT_GT(checked, 0);
  }
  std::vector<Box> scalar;
  flat_range_boxes({}, 0, 1, &scalar);
  ASSERT_EQ(scalar.size(), 1u);
  EXPECT_EQ(box_volume(scalar[0]), 1);
}

TEST(Box, CopyRunsMoveEveryElementOfTheIntersection) {
  const std::vector<int64_t> shape = {6, 5, 4};
  const Box from{{1, 0, 1}, {4, 5, 3}}, to{{0, 2, 0}, {6, 2, 4}};
  Box both;
  ASSERT_TRUE(intersect_boxes(from, to, &both));
  EXPECT_EQ(both, (Box{{1, 2, 1}, {4, 2, 3}}));
  // Source buffer: box `from` row-major after 7 elements of something else; each element holds
  // its global flat index.
  std::vector<int64_t> src(7 + box_volume(from), -1), dst(3 + box_volume(to), -1);
  int64_t k = 7;
  for (const auto& x : elements(from)) src[k++] = flat_index(shape, x);
  std::vector<BoxRun> runs;
  box_copy_runs(both, from, 7, to, 3, &runs);
  for (const BoxRun& r : runs)
    for (int64_t i = 0; i < r.len; ++i) dst[r.dst + i] = src[r.src + i];
  k = 3;
  for (const auto& x : elements(to)) {
    Box one{x, {1, 1, 1}}, tmp;
    const bool in = intersect_boxes(one, from, &tmp);
    EXPECT_EQ(dst[k++], in ? flat_index(shape, x) : -1);
  }
  // Whole rows in both: one merged run.
  runs.clear();
  const Box rows{{2, 0, 0}, {3, 5, 4}};
  box_copy_runs(rows, whole_box(shape), 0, rows, 0, &runs);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].src, 40);
  EXPECT_EQ(runs[0].len, 60);
  EXPECT_FALSE(intersect_boxes(Box{{0, 0, 0}, {1, 5, 4}}, Box{{1, 0, 0}, {1, 5, 4}}, &both));
}

// c_attn of GPT-2 with C = 8, 4 heads of 2: rows [0, 8) are q, [8, 16) k, [16, 24) v; element
// (row, col) holds 100 * row + col.
TEST(TpPlan, FusedQkvSliceTakesEachRanksHeadsFromQKAndV) {
  const int64_t c = 8;
  Tensor w = Tensor::empty({3 * c, c}, DType::kF32);
  for (int64_t r = 0; r < 3 * c; ++r)
    for (int64_t k = 0; k < c; ++k) w.data<float>()[r * c + k] = static_cast<float>(100 * r + k);
  const TpEntry e{"h.0.attn.c_attn.weight", TpStyle::kColumn, 0, 3};
  for (int tp : {1, 2, 4}) {
    const int64_t rows = c / tp;  // rows of q (and of k, of v) per rank
    for (int rank = 0; rank < tp; ++rank) {
      Tensor s = tp_slice(w, e, tp, rank);
      ASSERT_EQ(s.shape(), (Shape{3 * rows, c}));
      // By hand: q rows [rank*rows, +rows), then k's, then v's.
      std::vector<int64_t> want_rows;
      for (int64_t part = 0; part < 3; ++part)
        for (int64_t i = 0; i < rows; ++i) want_rows.push_back(part * c + rank * rows + i);
      for (int64_t i = 0; i < 3 * rows; ++i)
        for (int64_t k = 0; k < c; ++k)
          ASSERT_EQ(s.data<float>()[i * c + k], static_cast<float>(100 * want_rows[i] + k))
              << "tp " << tp << " rank " << rank << " row " << i;
      // The same rows as boxes, one per partition.
      const std::vector<Box> boxes = tp_boxes(e, w.shape(), tp, rank);
      if (tp == 1) {  // nothing split: the whole tensor
        EXPECT_EQ(boxes, std::vector<Box>{whole_box(w.shape())});
        continue;
      }
      ASSERT_EQ(boxes.size(), 3u);
      for (int part = 0; part < 3; ++part)
        EXPECT_EQ(boxes[part], (Box{{part * c + rank * rows, 0}, {rows, c}}));
    }
  }
  // A row-parallel weight splits columns; an unsplit entry gives the whole tensor.
  const TpEntry row{"h.0.attn.c_proj.weight", TpStyle::kRow, 1};
  Tensor r1 = tp_slice(w, row, 2, 1);
  ASSERT_EQ(r1.shape(), (Shape{3 * c, c / 2}));
  EXPECT_EQ(r1.data<float>()[0], 4.0f);
  EXPECT_EQ(r1.data<float>()[5], 105.0f);  // row 1, column 4 + 1
  const TpEntry rep{"wpe.weight", TpStyle::kReplicated, -1};
  EXPECT_EQ(tp_slice(w, rep, 4, 3).shape(), w.shape());
}

}  // namespace
}  // namespace kiln::parallel

// CPU tests of the index mapping of rotary_embedding's fast CUDA kernels (core/ops/rope_index.h,
// used by core/ops/rope.cu): every unit's elements of x, of the result and of the angle tables for
// contiguous, projection-layout, packed-slice, strided and odd shapes (each result element written
// exactly once, from the right x element and table entry) with the result laid out (B, H, T, D)
// or (B, T, H, D), units in x's memory order, the 32-bit limits (checked against 64-bit arithmetic
// near them), and the choice of the vector width.
#include "core/ops/rope_index.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {
namespace {

using rope_index::head_of;
using rope_index::make_map;
using rope_index::Map;
using rope_index::Unit;
using rope_index::unit_of;
using rope_index::vec_width;

struct Layout {
  std::string name;
  int64_t size[4];    // (B, H, T, D)
  int64_t stride[4];  // x's strides
};

// (B, H, T, D) contiguous.
Layout contiguous(int64_t b, int64_t h, int64_t t, int64_t d) {
  return {"contiguous", {b, h, t, d}, {h * t * d, t * d, d, 1}};
}
// A (B, T, H, D) tensor (the projection's layout) transposed to (B, H, T, D).
Layout projection(int64_t b, int64_t h, int64_t t, int64_t d) {
  return {"projection", {b, h, t, d}, {t * h * d, d, h * d, 1}};
}
// The heads [h0, h0 + h) of a packed (B, T, width) tensor, width = all heads * D, as (B, H, T, D).
Layout packed_slice(int64_t b, int64_t h, int64_t t, int64_t d, int64_t width) {
  return {"packed slice", {b, h, t, d}, {t * width, d, width, 1}};
}

// Result layouts: (B, H, T, D) contiguous, or over (B, T, H, D) memory (the backward's layout for
// a heads-inner x).
enum class OutLayout { kBHTD, kBTHD };

// The (B, H, T) strides of a result of shape `size` laid out as `out`.
void strides_of(const int64_t (&size)[4], OutLayout out, int64_t (&ostride)[3]) {
  const int64_t h = size[1], t = size[2], d = size[3];
  if (out == OutLayout::kBHTD) {
    ostride[0] = h * t * d, ostride[1] = t * d, ostride[2] = d;
  } else {
    ostride[0] = t * h * d, ostride[1] = d, ostride[2] = h * d;
  }
}

// The (b, h, t, i) of result offset o of a (B, H, T, D) result laid out as `out`.
struct Coord {
  int64_t b, h, t, i;
};
Coord decode(int64_t o, const int64_t (&size)[4], OutLayout out) {
  const int64_t d = size[3], r = o / d, nh = size[1], nt = size[2];
  if (out == OutLayout::kBHTD) return {r / nt / nh, r / nt % nh, r % nt, o % d};
  return {r / nh / nt, r % nh, r / nh % nt, o % d};
}

std::optional<Map> map_for(const int64_t (&size)[4], const int64_t (&stride)[4], int vec,
                           OutLayout out) {
  int64_t ostride[3];
  strides_of(size, out, ostride);
  return make_map(size, stride, vec, ostride);
}

// Checks every unit of the map of `l` with `vec` pairs per unit and the result laid out as `out`:
// the elements each of its heads names are those of its (b, h, t, i) (decoded from its output
// offset, independently of unit_of), each result element is written once, x is read in
// increasing address order when `memory_order`, and a unit covers `hp` heads.
void check_all_units(const Layout& l, int vec, bool memory_order, uint32_t hp = 1,
                     OutLayout out = OutLayout::kBHTD) {
  SCOPED_TRACE(l.name + " vec " + std::to_string(vec) +
               (out == OutLayout::kBTHD ? " out (B, T, H, D)" : ""));
  const std::optional<Map> m = map_for(l.size, l.stride, vec, out);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->hp, hp);
  const int64_t d = l.size[3], half = d / 2;
  const int64_t numel = l.size[0] * l.size[1] * l.size[2] * d;
  ASSERT_EQ(static_cast<int64_t>(m->units) * vec * 2 * m->hp, numel);
  std::vector<int> written(numel, 0);
  int64_t last_x = -1;
  for (uint32_t k = 0; k < m->units; ++k) {
    const Unit u0 = unit_of(k, *m);
    for (uint32_t hh = 0; hh < m->hp; ++hh) {
      const Unit u = head_of(u0, hh, *m);
      for (int64_t lane = 0; lane < vec; ++lane) {
        const int64_t o = u.out + lane;
        ASSERT_LT(o, numel);
        const auto [b, h, t, i] = decode(o, l.size, out);
        ASSERT_LT(i, half) << "unit " << k << " lane " << lane << " writes a second-half element";
        const int64_t x1 = b * l.stride[0] + h * l.stride[1] + t * l.stride[2] + i * l.stride[3];
        ASSERT_EQ(u.x1 + lane * l.stride[3], x1) << "unit " << k << " head " << hh;
        ASSERT_EQ(u.x2 + lane * l.stride[3], x1 + half * l.stride[3]) << "unit " << k;
        ASSERT_EQ(u.tab + lane, t * half + i) << "unit " << k << " head " << hh;
        ++written[o];
        ++written[o + half];
      }
    }
    if (memory_order) {
      EXPECT_GT(static_cast<int64_t>(u0.x1), last_x) << "unit " << k << " reads out of order";
      last_x = u0.x1;
    }
  }
  for (int64_t o = 0; o < numel; ++o) ASSERT_EQ(written[o], 1) << "result element " << o;
}

TEST(RopeIndex, EveryUnitNamesItsElements) {
  for (int vec : {1, 2, 4}) {
    check_all_units(contiguous(2, 3, 5, 8), vec, true);
    check_all_units(contiguous(2, 4, 5, 8), vec, true, 4);  // 4 heads per unit
    check_all_units(contiguous(2, 6, 5, 8), vec, true, 2);
    check_all_units(projection(2, 3, 5, 8), vec, true);
    check_all_units(projection(2, 4, 5, 8), vec, true);        // heads inner: one per unit
    check_all_units(packed_slice(2, 4, 5, 8, 64), vec, true);  // q of (4 + 2 * 2) heads
    check_all_units(packed_slice(2, 2, 5, 8, 64), vec, true);  // k
  }
  check_all_units(contiguous(3, 5, 7, 16), 8, true);
  check_all_units(contiguous(2, 32, 9, 64), 8, true, 4);
  check_all_units(projection(2, 32, 9, 64), 8, true);
  // Odd sizes: D / 2 = 3 and 5, T = 1, a single pair.
  check_all_units(contiguous(2, 3, 7, 6), 1, true);
  check_all_units(contiguous(1, 8, 7, 6), 1, true, 4);
  check_all_units(projection(1, 3, 7, 10), 1, true);
  check_all_units(projection(2, 3, 1, 8), 4, true);
  check_all_units(projection(2, 4, 1, 8), 4, true, 4);  // T = 1: heads outer, 4 per unit
  check_all_units(contiguous(1, 1, 1, 2), 1, true);
  // (B, H, D, T) memory read as (B, H, T, D): innermost stride T, not in memory order.
  check_all_units({"d outer", {2, 3, 5, 8}, {120, 40, 1, 5}}, 1, false);
  check_all_units({"d outer, 2 heads", {2, 2, 5, 8}, {80, 40, 1, 5}}, 1, false, 2);
  // Broadcast heads (stride 0): every head reads the same x row.
  check_all_units({"broadcast", {2, 3, 5, 8}, {40, 0, 8, 1}}, 2, false);
}

// The backward's result for a heads-inner x: (B, T, H, D) memory, from the contiguous gradient
// cuDNN writes (heads outer, several per unit) or from any other layout.
TEST(RopeIndex, ResultInTheProjectionLayout) {
  const OutLayout bthd = OutLayout::kBTHD;
  for (int vec : {1, 2, 4}) {
    check_all_units(contiguous(2, 3, 5, 8), vec, true, 1, bthd);
    check_all_units(contiguous(2, 4, 5, 8), vec, true, 4, bthd);
    check_all_units(contiguous(2, 6, 5, 8), vec, true, 2, bthd);
    check_all_units(projection(2, 4, 5, 8), vec, true, 1, bthd);
    check_all_units(packed_slice(2, 2, 5, 8, 64), vec, true, 1, bthd);
  }
  check_all_units(contiguous(2, 32, 9, 64), 8, true, 4, bthd);  // Llama 1B's q, shorter
  check_all_units(contiguous(2, 4, 9, 64), 8, true, 4, bthd);   // and its k
  check_all_units(projection(2, 4, 1, 8), 4, true, 4, bthd);    // T = 1
  check_all_units(contiguous(1, 8, 7, 6), 1, true, 4, bthd);    // D / 2 = 3
  check_all_units({"d outer", {2, 3, 5, 8}, {120, 40, 1, 5}}, 1, false, 1, bthd);
  const std::optional<Map> m =
      map_for(contiguous(2, 3, 5, 8).size, contiguous(2, 3, 5, 8).stride, 2, bthd);
  EXPECT_EQ(m->ob, 5u * 3 * 8);
  EXPECT_EQ(m->oh, 8u);
  EXPECT_EQ(m->ot, 3u * 8);
}

TEST(RopeIndex, RowOrderFollowsMemory) {
  EXPECT_FALSE(
      make_map(contiguous(2, 3, 5, 8).size, contiguous(2, 3, 5, 8).stride, 1)->heads_inner);
  EXPECT_TRUE(make_map(projection(2, 3, 5, 8).size, projection(2, 3, 5, 8).stride, 1)->heads_inner);
  const Layout one_t = projection(2, 3, 1, 8);  // T = 1: the stride of T says nothing
  EXPECT_FALSE(make_map(one_t.size, one_t.stride, 1)->heads_inner);
}

// unit_of and head_of against 64-bit arithmetic at sampled units of maps near the 32-bit limits.
void check_sampled_units(const Layout& l, int vec, OutLayout out = OutLayout::kBHTD) {
  SCOPED_TRACE(l.name);
  const std::optional<Map> m = map_for(l.size, l.stride, vec, out);
  ASSERT_TRUE(m.has_value());
  const int64_t half = l.size[3] / 2, upr = half / vec, nh = l.size[1], nt = l.size[2];
  const int64_t groups = nh / m->hp;
  for (int64_t k : {int64_t{0}, int64_t{1}, int64_t{m->units} / 3, int64_t{m->units} - 1}) {
    const int64_t i = k % upr * vec, r = k / upr;
    const int64_t h0 = m->heads_inner ? r % nh : r / nt % groups * m->hp;
    const int64_t t = m->heads_inner ? r / nh % nt : r % nt;
    const int64_t b = m->heads_inner ? r / (nh * nt) : r / (nt * groups);
    for (int64_t hh = 0; hh < m->hp; ++hh) {
      const int64_t h = h0 + hh;
      const int64_t x1 = b * l.stride[0] + h * l.stride[1] + t * l.stride[2] + i;
      const Unit u = head_of(unit_of(static_cast<uint32_t>(k), *m), hh, *m);
      EXPECT_EQ(u.x1, x1) << k;
      EXPECT_EQ(u.x2, x1 + half) << k;
      const int64_t row = out == OutLayout::kBHTD ? (b * nh + h) * nt + t : (b * nt + t) * nh + h;
      EXPECT_EQ(u.out, row * 2 * half + i) << k;
      EXPECT_EQ(u.tab, t * half + i) << k;
    }
  }
}

TEST(RopeIndex, ThirtyTwoBitLimits) {
  // 2^30 result elements: the largest 32-bit map.
  check_sampled_units(contiguous(1, 32, 1 << 15, 1024), 8);
  check_sampled_units(projection(8, 32, 1 << 12, 1024), 4);
  check_sampled_units(contiguous(1, 32, 1 << 15, 1024), 8, OutLayout::kBTHD);
  check_sampled_units(projection(8, 32, 1 << 12, 1024), 4, OutLayout::kBTHD);
  // x offsets up to 2^31 - 1 with a small result.
  check_sampled_units({"far rows", {2, 1, 1, 64}, {(int64_t{1} << 31) - 64, 64, 64, 1}}, 8);
  // Past the limits: the caller runs the 64-bit kernel.
  const Layout big = contiguous(2, 32, 1 << 15, 1024);  // 2^31 result elements
  EXPECT_FALSE(make_map(big.size, big.stride, 8).has_value());
  const Layout far = {"far", {2, 1, 1, 64}, {int64_t{1} << 31, 64, 64, 1}};
  EXPECT_FALSE(make_map(far.size, far.stride, 8).has_value());
  const Layout far_sum = {"far sum", {3, 1, 1, 64}, {(int64_t{1} << 30) + 32, 64, 64, 1}};
  EXPECT_FALSE(make_map(far_sum.size, far_sum.stride, 8).has_value());  // each stride fits
  const Layout negative = {"negative", {2, 1, 1, 64}, {-64, 64, 64, 1}};
  EXPECT_FALSE(make_map(negative.size, negative.stride, 1).has_value());
  const Layout odd_vec = contiguous(1, 1, 2, 6);  // D / 2 = 3 is no multiple of 2
  EXPECT_FALSE(make_map(odd_vec.size, odd_vec.stride, 2).has_value());
}

// A result written into a slice of a packed (B, T, W) buffer (the packed q / k / v gradient):
// every unit's result offset through the slice's strides, and the 32-bit limit on them.
TEST(RopeIndex, ResultIntoAPackedSlice) {
  const Layout dk = contiguous(2, 2, 5, 8);          // (B, Hkv, T, D) gradient as cuDNN writes it
  const int64_t w = 64, ostride[3] = {5 * w, 8, w};  // heads 4..5 of (B, T, 8 * 8)
  for (int vec : {1, 2, 4}) {
    const std::optional<Map> m = make_map(dk.size, dk.stride, vec, ostride);
    ASSERT_TRUE(m.has_value());
    std::vector<int> written(2 * 5 * w, 0);
    for (uint32_t k = 0; k < m->units; ++k) {
      const Unit u0 = unit_of(k, *m);
      for (uint32_t hh = 0; hh < m->hp; ++hh) {
        const Unit u = head_of(u0, hh, *m);
        for (int lane = 0; lane < vec; ++lane) {
          ++written[u.out + lane];
          ++written[u.out + 4 + lane];
        }
      }
    }
    for (int64_t o = 0; o < 2 * 5 * w; ++o) {
      const int64_t col = o % w;  // the slice is columns 0..15 of each row here
      ASSERT_EQ(written[o], col < 16 ? 1 : 0) << "vec " << vec << " offset " << o;
    }
  }
  // Result offsets past 2^31 - 1: the 64-bit kernel.
  // The largest offset is ob + 8 + 4 * 64 + 7 = ob + 271.
  const int64_t near[3] = {(int64_t{1} << 31) - 1 - 271, 8, 64};
  EXPECT_TRUE(make_map(dk.size, dk.stride, 1, near).has_value());
  const int64_t far[3] = {(int64_t{1} << 31) - 271, 8, 64};
  EXPECT_FALSE(make_map(dk.size, dk.stride, 1, far).has_value());
}

TEST(RopeIndex, VectorWidth) {
  const uint64_t a = 1 << 12;  // an aligned address
  auto w = [&](const Layout& l, uint64_t x, uint64_t out, int elem, uint64_t tab, int max_vec) {
    int64_t os[3];
    rope_index::contiguous_out(l.size, os);
    return vec_width(l.size, l.stride, os, x, out, elem, tab, 4, max_vec);
  };
  const Layout q = projection(8, 32, 16, 64);
  int64_t q_out[3];
  rope_index::contiguous_out(q.size, q_out);
  EXPECT_EQ(w(q, a, a, 2, a, 8), 8);                                   // bf16: 16-byte accesses
  EXPECT_EQ(w(q, a, a, 4, a, 4), 4);                                   // f32
  EXPECT_EQ(vec_width(q.size, q.stride, q_out, a, a, 8, a, 8, 2), 2);  // f64 (f64 tables)
  // The result's strides count too: a result in a packed buffer whose rows are 36 or 6 elements.
  const int64_t packed36[3] = {5 * 36, 16, 36}, packed6[3] = {5 * 6, 16, 6};
  const Layout k = contiguous(2, 2, 5, 16);
  EXPECT_EQ(vec_width(k.size, k.stride, packed36, a, a, 2, a, 4, 8), 4);
  EXPECT_EQ(vec_width(k.size, k.stride, packed6, a, a, 2, a, 4, 8), 2);
  EXPECT_EQ(w(q, a + 8, a, 2, a, 8), 4);                    // x only 8-byte aligned
  EXPECT_EQ(w(q, a + 2, a, 2, a, 8), 1);                    // x only 2-byte aligned
  EXPECT_EQ(w(q, a, a + 4, 2, a, 8), 2);                    // the result 4-byte aligned
  EXPECT_EQ(w(q, a, a, 2, a + 16, 8), 4);                   // tables 16-byte aligned: 4 f32 at most
  EXPECT_EQ(w(projection(2, 3, 5, 8), a, a, 2, a, 8), 4);   // D / 2 = 4
  EXPECT_EQ(w(projection(2, 3, 5, 12), a, a, 2, a, 8), 2);  // D / 2 = 6
  EXPECT_EQ(w(projection(2, 3, 5, 10), a, a, 2, a, 8), 1);  // D / 2 = 5
  EXPECT_EQ(w(packed_slice(2, 2, 5, 16, 36), a, a, 2, a, 8), 4);  // T stride 36 elements
  EXPECT_EQ(w({"d outer", {2, 3, 5, 8}, {120, 40, 1, 5}}, a, a, 2, a, 8), 1);
  // A size-1 dim's stride is never used.
  EXPECT_EQ(w({"one batch", {1, 3, 5, 8}, {7, 40, 8, 1}}, a, a, 2, a, 8), 4);
}

}  // namespace
}  // namespace kiln

// The index mapping of rotary_embedding's fast CUDA kernels (core/ops/rope.cu), written once for
// the device and the host so that a CPU test (rope_index_test.cc) can check it: which elements of
// x, of the result and of the (T, D/2) cos / sin tables thread unit k handles, in 32-bit
// arithmetic, and the host-side choice of the vector width and of the row order. No CUDA headers.
#pragma once

#include <cstdint>
#include <optional>

#if defined(__CUDACC__)
#define KILN_ROPE_HD __host__ __device__ __forceinline__
#else
#define KILN_ROPE_HD inline
#endif

namespace kiln::rope_index {

// The most heads one unit rotates (see Map::hp).
constexpr uint32_t kMaxHeadsPerUnit = 4;

// x (B, H, T, D) read through strides (sb, sh, st, sd), D = 2 * half. A unit is `vec` consecutive
// pairs (i .. i + vec - 1, each paired with i + half ..) of `hp` rows: heads h .. h + hp - 1 at
// one (b, t), which share their cos / sin values (loaded once). units_per_row = half / vec. Units
// are numbered in x's memory order: rows (b, t, h) with hp = 1 when heads_inner (the head stride
// is the smaller one, as in the projection's (B, T, H, D) layout: a warp's threads then share
// table entries too), else (b, h / hp, t). Consecutive units of a row are adjacent, so a warp
// reads whole rows of x and writes whole rows of the result.
struct Map {
  uint32_t vec = 1;            // pairs per unit and head (elements per vector access)
  uint32_t hp = 1;             // heads per unit, <= kMaxHeadsPerUnit, divides h
  uint32_t groups = 0;         // h / hp
  uint32_t units_per_row = 0;  // half / vec
  uint32_t units = 0;          // B * (H / hp) * T * units_per_row
  uint32_t h = 0, t = 0, half = 0;
  uint32_t sb = 0, sh = 0, st = 0, sd = 0;  // x's strides, in elements
  uint32_t ob = 0, oh = 0, ot = 0;          // the result's (B, H, T) strides; its D stride is 1
  bool heads_inner = false;
};

// The (B, H, T) strides of a contiguous (B, H, T, D) result of shape `size`.
inline void contiguous_out(const int64_t (&size)[4], int64_t (&ostride)[3]) {
  ostride[0] = size[1] * size[2] * size[3], ostride[1] = size[2] * size[3], ostride[2] = size[3];
}

// The elements of one head of a unit, as offsets in elements: lane l (l < vec) rotates
// x[x1 + l * sd] and x[x2 + l * sd] with cos / sin [tab + l] and writes out[out + l] and
// out[out + half + l] (out: the result, through the map's ob, oh, ot).
struct Unit {
  uint32_t x1, x2, out, tab;
};

// Unit k's first head.
KILN_ROPE_HD Unit unit_of(uint32_t k, const Map& m) {
  const uint32_t j = k % m.units_per_row, r = k / m.units_per_row;
  uint32_t b, h, t;
  if (m.heads_inner) {
    h = r % m.h;
    const uint32_t bt = r / m.h;
    t = bt % m.t;
    b = bt / m.t;
  } else {
    t = r % m.t;
    const uint32_t bg = r / m.t;
    h = bg % m.groups * m.hp;
    b = bg / m.groups;
  }
  const uint32_t i = j * m.vec;
  const uint32_t x1 = b * m.sb + h * m.sh + t * m.st + i * m.sd;
  return {x1, x1 + m.half * m.sd, b * m.ob + h * m.oh + t * m.ot + i, t * m.half + i};
}

// Head h + hh (hh < m.hp) of unit u (from unit_of, whose first head is h): its row of x and of
// the result; the same table entries.
KILN_ROPE_HD Unit head_of(const Unit& u, uint32_t hh, const Map& m) {
  const uint32_t dx = hh * m.sh, dout = hh * m.oh;
  return {u.x1 + dx, u.x2 + dx, u.out + dout, u.tab};
}

// ---- host side ----

// The largest vec in {max_vec, max_vec / 2, .., 2} such that every vector access of `vec`
// elements of `elem_size` bytes is aligned: x's innermost stride is 1, half and the other strides
// of x and of the result (`ostride`, (B, H, T); its D stride is 1) are multiples of vec, and the
// addresses of x and of the result (`x_addr`, `out_addr`) and of the tables (`tab_addr`, elements
// of `tab_elem_size` bytes) are aligned to the access size. 1 (the scalar kernel) when none is.
inline int vec_width(const int64_t (&size)[4], const int64_t (&stride)[4],
                     const int64_t (&ostride)[3], uint64_t x_addr, uint64_t out_addr, int elem_size,
                     uint64_t tab_addr, int tab_elem_size, int max_vec) {
  if (stride[3] != 1) return 1;
  const int64_t half = size[3] / 2;
  for (int v = max_vec; v >= 2; v /= 2) {
    const uint64_t bytes = static_cast<uint64_t>(v) * elem_size;
    bool ok = half % v == 0 && x_addr % bytes == 0 && out_addr % bytes == 0 &&
              tab_addr % (static_cast<uint64_t>(v) * tab_elem_size) == 0;
    for (int d = 0; d < 3; ++d) {
      ok = ok && (size[d] == 1 || (stride[d] % v == 0 && ostride[d] % v == 0));
    }
    if (ok) return v;
  }
  return 1;
}

// Largest element offset of a (size) view with the given strides (D stride `sd`), or -1 when a
// stride is negative.
inline int64_t max_offset(const int64_t (&size)[4], const int64_t* stride3, int64_t sd) {
  int64_t m = (size[3] - 1) * sd;
  for (int d = 0; d < 3; ++d) {
    if (stride3[d] < 0) return -1;
    m += (size[d] - 1) * stride3[d];
  }
  return sd < 0 ? -1 : m;
}

// The Map for x with `vec` pairs per unit and the result written through `ostride` ((B, H, T)
// strides, D stride 1: contiguous, the projection's (B, T, H, D) memory, or a slice of a packed
// buffer), or nullopt when an offset could leave 32 bits (the caller then runs the 64-bit
// kernel): the unit count stays below 2^30 (so a grid-stride step cannot wrap either) and every
// offset into x and into the result below 2^31.
inline std::optional<Map> make_map(const int64_t (&size)[4], const int64_t (&stride)[4], int vec,
                                   const int64_t (&ostride)[3]) {
  const int64_t half = size[3] / 2, numel = size[0] * size[1] * size[2] * size[3];
  if (half == 0 || numel == 0 || vec < 1 || half % vec != 0) return std::nullopt;
  constexpr int64_t kUnitLimit = int64_t{1} << 30, kLimit = (int64_t{1} << 31) - 1;
  for (int d = 0; d < 4; ++d) {
    if (stride[d] > kLimit || (d < 3 && ostride[d] > kLimit)) return std::nullopt;
  }
  const int64_t max_x = max_offset(size, stride, stride[3]);
  const int64_t max_out = max_offset(size, ostride, 1);
  if (numel > kUnitLimit || max_x < 0 || max_x > kLimit || max_out < 0 || max_out > kLimit)
    return std::nullopt;
  Map m;
  // Heads inner when they are closer in memory than positions (and there is more than one of
  // each; a size-1 dim's stride says nothing).
  m.heads_inner = size[1] > 1 && size[2] > 1 && stride[1] < stride[2];
  m.hp = 1;
  if (!m.heads_inner) {
    for (int64_t hp = kMaxHeadsPerUnit; hp > 1 && m.hp == 1; hp /= 2)
      if (size[1] % hp == 0) m.hp = static_cast<uint32_t>(hp);
  }
  m.vec = static_cast<uint32_t>(vec);
  m.units_per_row = static_cast<uint32_t>(half / vec);
  m.units = static_cast<uint32_t>(numel / 2 / vec / m.hp);
  m.h = static_cast<uint32_t>(size[1]);
  m.groups = m.h / m.hp;
  m.t = static_cast<uint32_t>(size[2]);
  m.half = static_cast<uint32_t>(half);
  m.sb = static_cast<uint32_t>(stride[0]);
  m.sh = static_cast<uint32_t>(stride[1]);
  m.st = static_cast<uint32_t>(stride[2]);
  m.sd = static_cast<uint32_t>(stride[3]);
  m.ob = static_cast<uint32_t>(ostride[0]);
  m.oh = static_cast<uint32_t>(ostride[1]);
  m.ot = static_cast<uint32_t>(ostride[2]);
  return m;
}

// make_map for a contiguous (B, H, T, D) result.
inline std::optional<Map> make_map(const int64_t (&size)[4], const int64_t (&stride)[4], int vec) {
  int64_t ostride[3];
  contiguous_out(size, ostride);
  return make_map(size, stride, vec, ostride);
}

}  // namespace kiln::rope_index

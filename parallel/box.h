// N-dimensional boxes of a tensor (offset and length per dimension), the one shape every piece of a
// checkpoint and every tensor-parallel shard is described by. A flat element range of the
// row-major tensor (a ZeRO shard) is a short list of boxes laid out one after another
// (flat_range_boxes), so loading only ever intersects boxes. Header-only and free of kiln's tensor
// types so the manifest validator (and its fuzzer) can use it alone.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace kiln::parallel {

// The elements x with offset[d] <= x[d] < offset[d] + length[d] in every dimension d. A box of
// rank 0 is the single element of a 0-dim tensor.
struct Box {
  std::vector<int64_t> offset;
  std::vector<int64_t> length;
  bool operator==(const Box&) const = default;
};

inline int64_t box_volume(const Box& b) {
  int64_t n = 1;
  for (int64_t l : b.length) n *= l;
  return n;
}

// The whole tensor of `shape` as a box.
inline Box whole_box(const std::vector<int64_t>& shape) {
  return Box{std::vector<int64_t>(shape.size(), 0), shape};
}

// Whether b lies inside a tensor of `shape` (same rank, non-negative offsets and lengths).
inline bool box_inside(const Box& b, const std::vector<int64_t>& shape) {
  if (b.offset.size() != shape.size() || b.length.size() != shape.size()) return false;
  for (size_t d = 0; d < shape.size(); ++d)
    if (b.offset[d] < 0 || b.length[d] < 0 || b.offset[d] > shape[d] - b.length[d]) return false;
  return true;
}

// a ∩ b (REQUIRES: same rank); false when it is empty.
inline bool intersect_boxes(const Box& a, const Box& b, Box* out) {
  const size_t n = a.offset.size();
  out->offset.resize(n);
  out->length.resize(n);
  for (size_t d = 0; d < n; ++d) {
    const int64_t lo = std::max(a.offset[d], b.offset[d]);
    const int64_t hi = std::min(a.offset[d] + a.length[d], b.offset[d] + b.length[d]);
    if (hi <= lo) return false;
    out->offset[d] = lo;
    out->length[d] = hi - lo;
  }
  return true;
}

// The boxes that make up elements [start, start + count) of a row-major tensor of `shape`, in
// element order: each box's elements (row-major within the box) follow the previous box's. At most
// 2N - 1 boxes for N dimensions (a partial first row, full middle rows, a partial last row, the
// partial rows split recursively). REQUIRES: 0 <= start, start + count <= numel(shape).
inline void flat_range_boxes(const std::vector<int64_t>& shape, int64_t start, int64_t count,
                             std::vector<Box>* out, const std::vector<int64_t>& prefix = {}) {
  if (count <= 0) return;
  const size_t n = shape.size();
  auto emit = [&](std::vector<int64_t> off, std::vector<int64_t> len) {
    Box b;
    for (int64_t p : prefix) {
      b.offset.push_back(p);
      b.length.push_back(1);
    }
    b.offset.insert(b.offset.end(), off.begin(), off.end());
    b.length.insert(b.length.end(), len.begin(), len.end());
    out->push_back(std::move(b));
  };
  if (n == 0) {  // the single element of a 0-dim tensor
    emit({}, {});
    return;
  }
  if (n == 1) {
    emit({start}, {count});
    return;
  }
  const std::vector<int64_t> inner_shape(shape.begin() + 1, shape.end());
  int64_t inner = 1;
  for (int64_t d : inner_shape) inner *= d;
  std::vector<int64_t> sub_prefix = prefix;
  sub_prefix.push_back(0);
  if (start % inner != 0) {  // partial first row
    const int64_t m = std::min(count, inner - start % inner);
    sub_prefix.back() = start / inner;
    flat_range_boxes(inner_shape, start % inner, m, out, sub_prefix);
    start += m;
    count -= m;
  }
  if (count >= inner) {  // full rows
    const int64_t rows = count / inner;
    std::vector<int64_t> off(n, 0), len = shape;
    off[0] = start / inner;
    len[0] = rows;
    emit(off, len);
    start += rows * inner;
    count -= rows * inner;
  }
  if (count > 0) {  // partial last row
    sub_prefix.back() = start / inner;
    flat_range_boxes(inner_shape, 0, count, out, sub_prefix);
  }
}

// A box whose elements (row-major) sit at elements [at, at + volume) of some buffer.
struct PlacedBox {
  Box box;
  int64_t at = 0;
};

// flat_range_boxes with each box placed: the range's elements in order from buffer element 0.
inline std::vector<PlacedBox> place_flat_range(const std::vector<int64_t>& shape, int64_t start,
                                               int64_t count) {
  std::vector<Box> boxes;
  flat_range_boxes(shape, start, count, &boxes);
  std::vector<PlacedBox> out;
  int64_t at = 0;
  for (Box& b : boxes) {
    const int64_t v = box_volume(b);
    out.push_back({std::move(b), at});
    at += v;
  }
  return out;
}

namespace box_detail {

// place_concat_range's cut: emits `b` (local coordinates, its elements at `at`) as global boxes.
// `starts[p]` is where part p begins along `dim` in the local tensor (starts.back(): its size).
inline void place_local_box(const std::vector<Box>& parts, const std::vector<int64_t>& starts,
                            int dim, const Box& b, int64_t at, std::vector<PlacedBox>* out) {
  const int64_t lo = b.offset[dim], hi = lo + b.length[dim];
  size_t p = 0;
  while (starts[p + 1] <= lo) ++p;
  if (hi <= starts[p + 1]) {  // inside part p: shift into its place in the global tensor
    Box g = b;
    for (size_t d = 0; d < g.offset.size(); ++d)
      g.offset[d] = parts[p].offset[d] + b.offset[d] - (static_cast<int>(d) == dim ? starts[p] : 0);
    out->push_back({std::move(g), at});
    return;
  }
  size_t first = 0;  // the first dimension longer than 1
  while (b.length[first] == 1) ++first;
  if (static_cast<int>(first) == dim) {  // cut along dim: each cut is contiguous in the range
    for (int64_t x = lo; x < hi;) {
      while (starts[p + 1] <= x) ++p;
      Box c = b;
      c.offset[dim] = x;
      c.length[dim] = std::min(hi, starts[p + 1]) - x;
      place_local_box(parts, starts, dim, c, at, out);
      at += box_volume(c);
      x += c.length[dim];
    }
    return;
  }
  // An earlier dimension is longer than 1: its single slices are contiguous; cut each.
  Box c = b;
  c.length[first] = 1;
  const int64_t slice = box_volume(c);
  for (int64_t i = 0; i < b.length[first]; ++i) {
    c.offset[first] = b.offset[first] + i;
    place_local_box(parts, starts, dim, c, at + i * slice, out);
  }
}

}  // namespace box_detail

// A tensor held as the concatenation along dimension `dim` of `parts` (boxes of a global tensor,
// in order, all of the same lengths outside `dim`): what a tensor-parallel rank holds
// (parallel::tp_boxes). The boxes, in global coordinates, that hold elements [start, start +
// count) of that local tensor (row-major), each placed at its element counted from `start`, in
// order: flat_range_boxes of the local shape, each cut where it crosses from one part into the
// next (along `dim` when every earlier dimension of the box has length 1, so that each cut stays a
// contiguous run of the range; otherwise into single slices of its first dimension longer than
// 1 first). REQUIRES: parts non-empty, 0 <= dim < rank, 0 <= start, start + count <= numel.
inline std::vector<PlacedBox> place_concat_range(const std::vector<Box>& parts, int dim,
                                                 int64_t start, int64_t count) {
  std::vector<int64_t> local = parts[0].length;
  std::vector<int64_t> starts = {0};
  for (const Box& p : parts) starts.push_back(starts.back() + p.length[dim]);
  local[dim] = starts.back();
  std::vector<PlacedBox> out;
  for (const PlacedBox& b : place_flat_range(local, start, count))
    box_detail::place_local_box(parts, starts, dim, b.box, b.at, &out);
  return out;
}

// One contiguous run of a copy between two row-major box layouts: `len` elements from source
// element `src` to destination element `dst`.
struct BoxRun {
  int64_t src = 0, dst = 0, len = 0;
};

// The runs that copy the elements of `region` (inside both boxes) from a buffer holding box `from`
// row-major starting at element src_base to one holding box `to` row-major from dst_base, in
// source order; runs contiguous in both are merged. REQUIRES: region ⊆ from ∩ to, same rank.
inline void box_copy_runs(const Box& region, const Box& from, int64_t src_base, const Box& to,
                          int64_t dst_base, std::vector<BoxRun>* out) {
  const size_t n = region.offset.size();
  if (box_volume(region) == 0) return;
  auto index = [n](const Box& b, const std::vector<int64_t>& x) {
    int64_t i = 0;
    for (size_t d = 0; d < n; ++d) i = i * b.length[d] + (x[d] - b.offset[d]);
    return i;
  };
  const int64_t run = n == 0 ? 1 : region.length[n - 1];
  std::vector<int64_t> x = region.offset;  // the first element of the current row
  while (true) {
    const BoxRun r{src_base + index(from, x), dst_base + index(to, x), run};
    if (!out->empty() && out->back().src + out->back().len == r.src &&
        out->back().dst + out->back().len == r.dst)
      out->back().len += r.len;
    else
      out->push_back(r);
    // Next row: odometer over every dimension but the last.
    if (n <= 1) return;
    size_t d = n - 1;
    while (d-- > 0) {
      if (++x[d] < region.offset[d] + region.length[d]) break;
      x[d] = region.offset[d];
      if (d == 0) return;
    }
  }
}

inline std::string box_str(const Box& b) {
  std::string s = "[";
  for (size_t d = 0; d < b.offset.size(); ++d) {
    if (d) s += ", ";
    s += std::to_string(b.offset[d]) + ":" + std::to_string(b.offset[d] + b.length[d]);
  }
  return s + "]";
}

}  // namespace kiln::parallel

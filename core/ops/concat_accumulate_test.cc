// Direct accumulation through a concat (concat_accumulation_targets, core/ops/view.h), on the CPU
// (the marker logic is device-independent): a node whose input is a concat along dim 0 of f32
// leaves cast to f64 adds each row block of its gradient into that leaf's .grad and returns the
// accumulated marker; the concat passes the marker on to every piece, so every leaf's hook fires
// once with its final .grad and nothing is added twice, also when the concat's gradient is partly
// the marker and partly real (the concat used elsewhere too). Without every piece's .grad, along
// another dim, or under grad()'s capture, no targets: the ordinary path.
#include <gtest/gtest.h>

#include <vector>

#include "core/autograd.h"
#include "core/ops/elementwise.h"
#include "core/ops/view.h"

namespace kiln {
namespace {

// y = s * x, x a concat along dim 0 of leaves: its backward adds s * g's row blocks into the
// pieces' .grads when concat_accumulation_targets offers them (as the CUDA linear of a packed
// weight does with one GEMM per piece) and returns the marker.
class RowsIntoNode final : public Node {
 public:
  const char* name() const override { return "RowsInto"; }
  double s = 1;
  int* direct = nullptr;  // counts the nodes that took the direct path
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    Tensor gx = scale(g[0], s);
    const std::vector<Tensor> into = concat_accumulation_targets(next[0], g[0].device());
    if (into.empty()) return {gx};
    int64_t off = 0;
    for (const Tensor& t : into) {
      add_(t, gx.narrow(0, off, t.size(0)).to(DType::kF32));
      off += t.size(0);
    }
    ++*direct;
    return {accumulated_marker()};
  }
};

Tensor rows_into(const Tensor& x, double s, int* direct) {
  Tensor y = scale(x.detach(), s);
  if (auto n = record<RowsIntoNode>({&x})) {
    n->s = s;
    n->direct = direct;
    set_history(y, n);
  }
  return y;
}

Tensor f32(const std::vector<double>& v, const Shape& s) {
  return Tensor::from_vector(v, s).to(DType::kF32);
}

struct Piece {
  Tensor p;
  std::vector<std::vector<double>> seen;  // .grad each time the hook fired
};

// Two f32 leaves (2 x 2 and 1 x 2) with defined .grads 100 + i, their hooks recording .grad.
void make_pieces(Piece* a, Piece* b) {
  a->p = f32({1, 2, 3, 4}, {2, 2}).detach().set_requires_grad(true);
  b->p = f32({5, 6}, {1, 2}).detach().set_requires_grad(true);
  a->p.set_grad(f32({100, 101, 102, 103}, {2, 2}));
  b->p.set_grad(f32({104, 105}, {1, 2}));
  for (Piece* x : {a, b})
    x->p.register_grad_ready_hook([x](Tensor& t) { x->seen.push_back(t.grad().to_vector()); });
}

Tensor packed(const Piece& a, const Piece& b) {
  return concat({a.p.to(DType::kF64), b.p.to(DType::kF64)}, 0);
}

Tensor ones() { return Tensor::full({3, 2}, 1.0, DType::kF64); }

TEST(ConcatAccumulate, MarkerReachesEveryPieceAndFiresItsHookOnce) {
  Piece a, b;
  make_pieces(&a, &b);
  int direct = 0;
  Tensor gout = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {3, 2}, DType::kF64);
  rows_into(packed(a, b), 3, &direct).backward(gout);
  EXPECT_EQ(direct, 1);
  const std::vector<double> wa = {103, 107, 111, 115}, wb = {119, 123};
  EXPECT_EQ(a.p.grad().to_vector(), wa);
  EXPECT_EQ(b.p.grad().to_vector(), wb);
  ASSERT_EQ(a.seen.size(), 1u);
  ASSERT_EQ(b.seen.size(), 1u);
  EXPECT_EQ(a.seen[0], wa);
  EXPECT_EQ(b.seen[0], wb);
  // A second backward (the next micro-step) adds again.
  rows_into(packed(a, b), 1, &direct).backward(gout);
  EXPECT_EQ(direct, 2);
  EXPECT_EQ(a.p.grad().to_vector(), (std::vector<double>{104, 109, 114, 119}));
  EXPECT_EQ(b.p.grad().to_vector(), (std::vector<double>{124, 129}));
  EXPECT_EQ(a.seen.size(), 2u);
  EXPECT_EQ(b.seen.size(), 2u);
}

TEST(ConcatAccumulate, PartlyMarkerPartlyRealAddsEachShareOnce) {
  // The packed tensor also feeds an ordinary op: the concat's gradient is that op's (real) one,
  // split as usual, while the direct node's share is in .grad already. .grad = G0 + 3 + 2 x.
  Piece a, b;
  make_pieces(&a, &b);
  int direct = 0;
  Tensor c = packed(a, b);
  add(rows_into(c, 3, &direct), mul(c, c)).backward(ones());
  EXPECT_EQ(direct, 1);
  EXPECT_EQ(a.p.grad().to_vector(), (std::vector<double>{105, 108, 111, 114}));
  EXPECT_EQ(b.p.grad().to_vector(), (std::vector<double>{117, 120}));
  EXPECT_EQ(a.seen.size(), 1u);
  EXPECT_EQ(b.seen.size(), 1u);
  // Two direct nodes on the same concat: both markers, each share added once.
  Tensor d = packed(a, b);
  add(rows_into(d, 1, &direct), rows_into(d, 2, &direct)).backward(ones());
  EXPECT_EQ(direct, 3);
  EXPECT_EQ(a.p.grad().to_vector(), (std::vector<double>{108, 111, 114, 117}));
  EXPECT_EQ(b.p.grad().to_vector(), (std::vector<double>{120, 123}));
  EXPECT_EQ(a.seen.size(), 2u);
  EXPECT_EQ(b.seen.size(), 2u);
}

TEST(ConcatAccumulate, NoTargetsUnlessEveryPieceOffersItsGrad) {
  Piece a, b;
  make_pieces(&a, &b);
  int direct = 0;
  b.p.zero_grad();  // one piece without a .grad: the ordinary path for all of them
  rows_into(packed(a, b), 3, &direct).backward(ones());
  EXPECT_EQ(direct, 0);
  EXPECT_EQ(a.p.grad().to_vector(), (std::vector<double>{103, 104, 105, 106}));
  EXPECT_EQ(b.p.grad().to_vector(), (std::vector<double>{3, 3}));
  EXPECT_EQ(a.seen.size() + b.seen.size(), 2u);
  // A piece that needs no gradient, or a concat along dim 1: none either.
  Tensor frozen = f32({7, 8}, {1, 2});
  rows_into(concat({a.p.to(DType::kF64), frozen.to(DType::kF64)}, 0), 1, &direct).backward(ones());
  EXPECT_EQ(direct, 0);
  EXPECT_EQ(a.p.grad().to_vector(), (std::vector<double>{104, 105, 106, 107}));
  Tensor cols = concat({a.p.to(DType::kF64), a.p.to(DType::kF64)}, 1);  // (2, 4)
  rows_into(cols, 1, &direct).backward(Tensor::full({2, 4}, 1.0, DType::kF64));
  EXPECT_EQ(direct, 0);
  EXPECT_EQ(a.p.grad().to_vector(), (std::vector<double>{106, 107, 108, 109}));
  // grad() captures the leaves: .grad untouched, the node's own gradient comes back.
  std::vector<Tensor> g = grad({rows_into(packed(a, b), 3, &direct)}, {ones()}, {a.p, b.p});
  EXPECT_EQ(direct, 0);
  EXPECT_EQ(g[0].to_vector(), (std::vector<double>{3, 3, 3, 3}));
  EXPECT_EQ(g[1].to_vector(), (std::vector<double>{3, 3}));
  EXPECT_EQ(a.p.grad().to_vector(), (std::vector<double>{106, 107, 108, 109}));
}

}  // namespace
}  // namespace kiln

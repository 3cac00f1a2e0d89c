// kiln plan's memory model, part 2: what a block, the embedding and the head save for backward and
// what their backward passes add, read off models/transformer.cc and the ops' autograd nodes.
// N = micro_batch x seq_len rows, C = d_model, F = d_ff / tp, W = local heads x head_dim; every
// tensor is one allocation in the compute dtype unless said otherwise. The CPU runs the composite
// ops (linear = matmul + bias add, the MLP as linear -> gelu -> linear, the classifier as a matmul
// then cross_entropy); the GPU runs the fused ones (cuBLASLt linear nodes that save a 16-bit copy
// of the weight, mlp_gelu, linear_cross_entropy that computes dx and dW in the forward).
#include <algorithm>

#include "launch/memory_plan.h"

namespace kiln::launch::plan_internal {
namespace {

struct Dims {
  int64_t n, c, f, w, kvw, v, b, heads, cb;
  bool gpt2, cuda, f32;
};

Dims dims(const PlanInput& in, const PlanLayout& l) {
  const models::ModelSpec& s = in.spec;
  Dims d;
  d.b = l.micro_batch;
  d.n = l.micro_batch * in.seq_len;
  d.c = s.d_model;
  d.f = s.d_ff / l.tp;
  d.heads = s.n_head / l.tp;
  d.w = d.heads * s.head_dim();
  d.kvw = s.n_kv_head / l.tp * s.head_dim();
  d.v = s.padded_vocab() / l.tp;
  d.cb = static_cast<int64_t>(dtype_size(in.compute));
  d.gpt2 = s.family == models::Family::kGPT2;
  d.cuda = in.cuda;
  d.f32 = in.compute == DType::kF32;
  return d;
}

// GPT-2 block (Block::forward): ln_1 saves its stats (x is the block input); c_attn's node saves
// its input n1; attention saves q, k, v (views of the qkv output), its output and the f32
// log-sum-exp; on the CPU merge_heads copies the output (c_proj saves the copy; on the GPU the
// output is laid out so that the merge is a view); add_layer_norm saves the residual sum and its
// stats, c_fc saves n2; the MLP saves the GELU input and output. Selective recompute keeps q, k, v
// and drops the attention node's output and log-sum-exp (on the GPU c_proj still holds the output).
int64_t gpt2_saved(const PlanInput& in, const Dims& d, models::Recompute rc) {
  auto a = [&](int64_t elems, int64_t bytes) { return plan_alloc(in, elems * bytes); };
  const bool selective = rc == models::Recompute::kSelective;
  int64_t s = 2 * a(d.n, d.cb) + a(d.n * d.c, d.cb);      // ln_1 stats, n1
  s += a(d.n * 3 * d.w, d.cb);                            // qkv
  if (!selective || d.cuda) s += a(d.n * d.w, d.cb);      // attention output
  if (!selective) s += a(d.b * d.heads * in.seq_len, 4);  // log-sum-exp (f32)
  if (!d.cuda) s += a(d.n * d.w, d.cb);                   // merged heads (CPU copy)
  s += 2 * a(d.n * d.c, d.cb) + 2 * a(d.n, d.cb);         // residual sum h1, n2, ln_2 stats
  s += 2 * a(d.n * d.f, d.cb);                            // GELU input and output
  return s;
}

// Llama block: RMSNorm saves its input and rstd; q and k are rotated copies (the projections'
// outputs are freed), v is the projection output; the attention as above; add_rms_norm saves
// the sum and rstd; SwiGLU saves gate and up, down_proj its output.
int64_t llama_saved(const PlanInput& in, const Dims& d, models::Recompute rc) {
  auto a = [&](int64_t elems, int64_t bytes) { return plan_alloc(in, elems * bytes); };
  const bool selective = rc == models::Recompute::kSelective;
  int64_t s = a(d.n, d.cb) + a(d.n * d.c, d.cb);       // rstd, n1
  s += a(d.n * d.w, d.cb) + 2 * a(d.n * d.kvw, d.cb);  // q (rotated), k (rotated), v
  if (!selective || d.cuda) s += a(d.n * d.w, d.cb);   // attention output
  if (!selective) s += a(d.b * d.heads * in.seq_len, 4);
  if (!d.cuda) s += a(d.n * d.w, d.cb);        // merged heads (CPU copy)
  s += 2 * a(d.n * d.c, d.cb) + a(d.n, d.cb);  // sum, n2, rstd
  s += 3 * a(d.n * d.f, d.cb);                 // gate, up, swiglu output
  return s;
}

// The 16-bit weight copies (nn::to_compute) the linear and norm nodes save; none in f32.
int64_t weight_copies(const PlanInput& in, const PlanLayout& l, const Dims& d) {
  if (d.f32) return 0;
  int64_t s = 0;
  for (const ParamInfo& p : stage_params(in.spec, l.tp, 1, 0))
    if (p.block == 0 && p.name.find("bias") == std::string::npos)
      s += plan_alloc(in, p.numel * d.cb);
  return s;
}

}  // namespace

BlockBytes block_bytes(const PlanInput& in, const PlanLayout& l) {
  const Dims d = dims(in, l);
  auto a = [&](int64_t elems, int64_t bytes) { return plan_alloc(in, elems * bytes); };
  BlockBytes b;
  b.input = a(d.n * d.c, d.cb);
  b.saved = d.gpt2 ? gpt2_saved(in, d, l.recompute) : llama_saved(in, d, l.recompute);
  b.weights = weight_copies(in, l, d);
  // The worst moment of a block's backward is the MLP's output projection: the incoming gradient
  // (N, C), the gradient of its input (N, F) and of its weight (C, F) are live while nothing of
  // the block is freed yet (the GELU / SwiGLU backward after it frees its saved output first). The
  // fused CUDA MLP holds the gradients of the GELU output and input at once.
  b.bwd_extra = a(d.n * d.c, d.cb) + a(d.n * d.f, d.cb) + a(d.c * d.f, d.cb);
  if (d.cuda) b.bwd_extra += a(d.n * d.f, d.cb);
  if (!d.gpt2) b.bwd_extra = std::max(b.bwd_extra, a(d.n * d.c, d.cb) + 3 * a(d.n * d.f, d.cb));
  // Full recompute: the checkpoint node's backward differentiates the re-run block with grad(),
  // which holds every parameter gradient of the block until it returns.
  for (const ParamInfo& p : stage_params(in.spec, l.tp, 1, 0))
    if (p.block == 0) b.param_grads += a(p.numel, 4);
  return b;
}

HeadBytes head_bytes(const PlanInput& in, const PlanLayout& l) {
  const Dims d = dims(in, l);
  auto a = [&](int64_t elems, int64_t bytes) { return plan_alloc(in, elems * bytes); };
  const bool tied = in.spec.tied_embeddings;
  const int64_t vc = a(d.v * d.c, d.cb), table_f32 = d.f32 ? 0 : a(d.v * d.c, 4);
  const int64_t nc = a(d.n * d.c, d.cb), nv = a(d.n * d.v, d.cb);
  HeadBytes h;
  // Embedding forward: the lookup and the sum with the positions (plus the table's 16-bit copy).
  h.embed_fwd = 2 * nc + (d.f32 ? 0 : vc);
  if (d.cuda) {
    // linear_cross_entropy: dx (N, C) and dW (V, C) computed in the forward and saved; while it
    // runs, the weight's 16-bit copy and a chunk of logits (2^28 bytes' worth of rows) are live.
    const int64_t rows =
        std::min<int64_t>(d.n, std::max<int64_t>(1, (int64_t{1} << 28) / (d.v * d.cb)));
    h.saved = nc + vc + 2 * a(d.n, 4);
    h.bwd_extra = (d.f32 ? 0 : vc) + a(rows * d.v, d.cb);  // at the head's forward
    h.held_dw = tied ? vc : 0;
  } else {
    // Final norm output (saved by the classifier matmul), its stats, the logits and the loss's
    // log-sum-exp (saved by cross_entropy). Backward: the logits' gradient while the logits are
    // held, then the gradients of the norm output and of the weight.
    h.saved = nc + 2 * a(d.n, d.cb) + nv + a(d.n, d.cb);
    h.bwd_extra = nv + std::max<int64_t>(0, nc + vc - nv);
    h.held_dw = tied ? vc : 0;
  }
  // Embedding backward: a dense table gradient, summed with the held classifier gradient (tied),
  // converted to f32 when 16-bit, then added into the fp32 gradient.
  h.embed_bwd = nc + vc + (tied ? h.held_dw + vc : 0) + table_f32;
  return h;
}

}  // namespace kiln::launch::plan_internal

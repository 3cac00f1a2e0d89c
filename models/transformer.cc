// GPT-2 / Llama decoder: modules, forward passes and the recompute policy.
#include "models/transformer.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <tuple>
#include <vector>

#include "core/check.h"
#include "core/env_switch.h"
#include "core/ops/activation.h"
#include "core/ops/attention.h"
#include "core/ops/cross_entropy.h"
#include "core/ops/dropout.h"
#include "core/ops/elementwise.h"
#include "core/ops/fp8.h"
#include "core/ops/layernorm.h"
#include "core/ops/matmul.h"
#include "core/ops/rmsnorm.h"
#include "core/ops/rope.h"
#include "core/ops/view.h"
#include "core/recompute.h"

namespace kiln::models {
namespace {

bool is_gpt2(const ModelSpec& s) { return s.family == Family::kGPT2; }

// Residual output projections get std / sqrt(2L) (GPT-2's scheme).
double residual_std(const ModelSpec& s) {
  return s.scale_residual_init ? s.init_std / std::sqrt(2.0 * s.n_layer) : s.init_std;
}

std::shared_ptr<nn::Linear> make_linear(const ModelSpec& s, int64_t in, int64_t out, double std,
                                        Generator& gen) {
  return std::make_shared<nn::Linear>(in, out, s.bias, std, gen, s.param_dtype);
}

// (B, T, H*D) -> (B, H, T, D), a view also of GPT-2's q, k, v thirds of the c_attn output
Tensor split_heads(const Tensor& x, int64_t heads) {
  return unflatten(x, 2, {heads, x.size(2) / heads}).permute({0, 2, 1, 3});
}
// (B, H, T, D) -> (B, T, H*D)
Tensor merge_heads(const Tensor& x) {
  const int64_t b = x.size(0), h = x.size(1), t = x.size(2), d = x.size(3);
  return x.permute({0, 2, 1, 3}).reshape({b, t, h * d});
}

Tensor maybe_dropout(const Tensor& x, double p, Generator& gen, bool train) {
  return p > 0 && train ? dropout(x, p, gen, true) : x;
}

// Whether l's forward is a plain GEMM that a fused op may take over: no fp8 GEMMs and no
// tensor-parallel hooks (Linear::forward handles those).
bool plain_linear(const nn::Linear& l, const Tensor& x, DType compute) {
  return !l.uses_fp8(x, compute) && !l.has_hooks() && !l.bias_hook;
}

// Whether the linears ls run as one GEMM of their concatenated weights: `on`, x on CUDA (or
// on_cpu, for tests), and every linear plain. The CPU path stays one GEMM per linear, so CPU
// results do not change.
bool fused_projection(bool on, bool on_cpu, const Tensor& x, DType compute,
                      std::initializer_list<const nn::Linear*> ls) {
  if (!on || !(x.device().is_cuda() || on_cpu)) return false;
  for (const nn::Linear* l : ls)
    if (!plain_linear(*l, x, compute)) return false;
  return true;
}

// x @ concat(W_i)^T (+ concat(b_i)): the outputs of the linears ls side by side along the last
// dim, from one GEMM. Their compute-dtype weights are concatenated along OUT as a view when they
// already lie side by side (an nn::PrecastScope's copies, in parameter order), else copied; the
// weight gradient of the GEMM goes back to each linear as its block of rows.
Tensor packed_linear(std::initializer_list<const nn::Linear*> ls, const Tensor& x, DType compute) {
  std::vector<Tensor> w, b;
  for (const nn::Linear* l : ls) {
    w.push_back(nn::to_compute(l->weight, compute));
    if (l->bias.defined()) b.push_back(nn::to_compute(l->bias, compute));
  }
  KILN_CHECK(b.empty() || b.size() == w.size()) << "packed_linear: some linears lack a bias";
  return linear(nn::to_compute(x, compute), concat_or_view(w, 0),
                b.empty() ? Tensor() : concat_or_view(b, 0));
}

}  // namespace

bool fused_projections_default() {
  static const bool on = EnvSwitch::env_flag("KILN_FUSED_PROJ", true);
  return on;
}

bool resid_epilogue_default() {
  static const bool on = EnvSwitch::env_flag("KILN_RESID_EPILOGUE", true);
  return on;
}

bool norm_skip_fused_default() {
  static const bool on = EnvSwitch::env_flag("KILN_NORM_SKIP_FUSED", true);
  return on;
}

bool resid_fuse_on_cpu_default() {
  static const bool on = EnvSwitch::env_flag("KILN_RESID_FUSE_ON_CPU", false);
  return on;
}

Attention::Attention(const ModelSpec& s, Generator& gen) : spec(s) {
  const int64_t c = s.d_model, d = s.head_dim();
  if (is_gpt2(s)) {
    c_attn = register_module("c_attn", make_linear(s, c, 3 * c, s.init_std, gen));
    c_proj = register_module("c_proj", make_linear(s, c, c, residual_std(s), gen));
  } else {
    q_proj = register_module("q_proj", make_linear(s, c, s.n_head * d, s.init_std, gen));
    k_proj = register_module("k_proj", make_linear(s, c, s.n_kv_head * d, s.init_std, gen));
    v_proj = register_module("v_proj", make_linear(s, c, s.n_kv_head * d, s.init_std, gen));
    o_proj = register_module("o_proj", make_linear(s, s.n_head * d, c, residual_std(s), gen));
  }
}

int64_t Attention::local_heads() const {
  const int64_t d = spec.head_dim();
  return is_gpt2(spec) ? c_attn->weight.size(0) / (3 * d) : q_proj->weight.size(0) / d;
}

int64_t Attention::local_kv_heads() const {
  return is_gpt2(spec) ? local_heads() : k_proj->weight.size(0) / spec.head_dim();
}

Tensor Attention::forward(const Tensor& x, DType compute, Recompute rc, Generator& drop,
                          bool train) {
  Tensor q, k, v;
  const int64_t heads = local_heads(), kv_heads = local_kv_heads();
  if (is_gpt2(spec)) {
    const int64_t w = heads * spec.head_dim();  // the width of each of q, k and v here
    auto qkv = split(c_attn->forward(x, compute), {w, w, w}, -1);
    q = split_heads(qkv[0], heads);
    k = split_heads(qkv[1], heads);
    v = split_heads(qkv[2], heads);
  } else {
    if (fused_projection(fuse_proj, fuse_on_cpu, x, compute,
                         {q_proj.get(), k_proj.get(), v_proj.get()})) {
      // One (B, T, (H + 2 Hkv) D) GEMM output; rope_qkv_packed copies v out (attention saves v,
      // and a view would keep the packed buffer alive) and writes the three gradients into one
      // packed gradient.
      const QkvHeads r =
          rope_qkv_packed(packed_linear({q_proj.get(), k_proj.get(), v_proj.get()}, x, compute),
                          heads, kv_heads, spec.rope_theta);
      q = r.q, k = r.k, v = r.v;
    } else {
      q = rotary_embedding(split_heads(q_proj->forward(x, compute), heads), spec.rope_theta);
      k = rotary_embedding(split_heads(k_proj->forward(x, compute), kv_heads), spec.rope_theta);
      v = split_heads(v_proj->forward(x, compute), kv_heads);
    }
  }
  Tensor y;
  if (rc == Recompute::kSelective) {  // keep q, k, v; recompute the attention core in backward
    y = checkpoint(
        [](const std::vector<Tensor>& in) {
          return std::vector<Tensor>{causal_attention(in[0], in[1], in[2])};
        },
        {q, k, v}, &drop)[0];
  } else {
    y = causal_attention(q, k, v);
  }
  y = merge_heads(y);
  y = is_gpt2(spec) ? c_proj->forward(y, compute) : o_proj->forward(y, compute);
  return maybe_dropout(y, spec.dropout, drop, train);
}

Mlp::Mlp(const ModelSpec& s, Generator& gen) : spec(s) {
  const int64_t c = s.d_model, f = s.d_ff;
  if (is_gpt2(s)) {
    c_fc = register_module("c_fc", make_linear(s, c, f, s.init_std, gen));
    c_proj = register_module("c_proj", make_linear(s, f, c, residual_std(s), gen));
  } else {
    gate_proj = register_module("gate_proj", make_linear(s, c, f, s.init_std, gen));
    up_proj = register_module("up_proj", make_linear(s, c, f, s.init_std, gen));
    down_proj = register_module("down_proj", make_linear(s, f, c, residual_std(s), gen));
  }
}

Tensor Mlp::forward(const Tensor& x, DType compute, Recompute rc, const Tensor& residual) {
  (void)rc;  // the fused MLP keeps only its GELU input; selective recompute targets attention
  auto plus_residual = [&residual](const Tensor& y) {
    return residual.defined() ? add(y, residual) : y;
  };
  auto w = [compute](const std::shared_ptr<nn::Linear>& l, bool bias) {
    return bias ? (l->bias.defined() ? nn::to_compute(l->bias, compute) : Tensor())
                : nn::to_compute(l->weight, compute);
  };
  const bool no_hooks = is_gpt2(spec) && !c_fc->has_hooks() && !c_proj->has_hooks();
  if (no_hooks && fp8_fused_mlp() && c_fc->uses_fp8(x, compute) && c_proj->fp8 &&
      c_proj->weight.size(0) % 16 == 0) {
    // KILN_FP8_FUSED_MLP=1: both linears in fp8 (c_proj's K and rows are c_fc's N and rows) as one
    // op, bias + GELU in the first fp8 GEMM's epilogue; with KILN_FP8_RESID_EPILOGUE=1 the
    // residual in the second's.
    const bool in_gemm = residual.defined() && fp8_resid_epilogue() &&
                         residual.dtype() == DType::kBF16 && residual.shape() == x.shape();
    const Tensor y = fp8_mlp_gelu(nn::to_compute(x, compute), w(c_fc, false), w(c_fc, true),
                                  w(c_proj, false), w(c_proj, true), c_fc->fp8_scaling(),
                                  c_proj->fp8_scaling(), in_gemm ? residual : Tensor());
    return in_gemm ? y : plus_residual(y);
  }
  if (is_gpt2(spec) && (c_fc->uses_fp8(x, compute) || c_fc->has_hooks() || c_proj->has_hooks())) {
    // fp8 GEMMs or tensor-parallel hooks: the two linears run as Linear::forward (c_proj decides
    // for its own shapes), with the GELU between them unfused.
    return plus_residual(c_proj->forward(gelu(c_fc->forward(x, compute)), compute));
  }
  if (is_gpt2(spec)) {
    // One op: on CUDA the bias and GELU run in the first GEMM's epilogue and the GELU gradient
    // in the backward GEMM's (the residual in the second's); on the CPU linear -> gelu -> linear.
    return mlp_gelu(nn::to_compute(x, compute), w(c_fc, false), w(c_fc, true), w(c_proj, false),
                    w(c_proj, true), residual);
  }
  Tensor hdn;
  if (fused_projection(fuse_proj, fuse_on_cpu, x, compute, {gate_proj.get(), up_proj.get()})) {
    // One (.., 2F) GEMM output; swiglu_packed's backward writes its gradient in one buffer.
    hdn = swiglu_packed(packed_linear({gate_proj.get(), up_proj.get()}, x, compute));
  } else {
    hdn = swiglu(gate_proj->forward(x, compute), up_proj->forward(x, compute));
  }
  if (!residual.defined() || !plain_linear(*down_proj, hdn, compute))
    return plus_residual(down_proj->forward(hdn, compute));
  return linear_add(nn::to_compute(hdn, compute), w(down_proj, false), w(down_proj, true),
                    residual);
}

Block::Block(const ModelSpec& s, Generator& gen) : spec(s) {
  if (is_gpt2(s)) {
    ln_1 = register_module(
        "ln_1", std::make_shared<nn::LayerNorm>(s.d_model, s.norm_eps, s.bias, s.param_dtype));
    attn = register_module("attn", std::make_shared<Attention>(s, gen));
    ln_2 = register_module(
        "ln_2", std::make_shared<nn::LayerNorm>(s.d_model, s.norm_eps, s.bias, s.param_dtype));
    mlp = register_module("mlp", std::make_shared<Mlp>(s, gen));
  } else {
    input_layernorm = register_module(
        "input_layernorm", std::make_shared<nn::RMSNorm>(s.d_model, s.norm_eps, s.param_dtype));
    attn = register_module("self_attn", std::make_shared<Attention>(s, gen));
    post_attention_layernorm =
        register_module("post_attention_layernorm",
                        std::make_shared<nn::RMSNorm>(s.d_model, s.norm_eps, s.param_dtype));
    mlp = register_module("mlp", std::make_shared<Mlp>(s, gen));
  }
}

Tensor Block::forward(const Tensor& x, DType compute, Recompute rc, Generator& drop, bool train) {
  // Pre-norm residual block; the first residual add is fused with the second norm:
  // (h1, n2) = (x + attn(norm1(x)), norm2(x + attn(norm1(x)))).
  const bool gpt2 = is_gpt2(spec);
  const bool cuda_or_test = x.device().is_cuda() || fuse_on_cpu;
  Tensor n1, skip = x;  // skip: x as the first residual add reads it
  if (norm_skip_fused && cuda_or_test) {
    // norm1 and the skip path as one op: their two gradients into x sum in one backward kernel.
    std::tie(skip, n1) =
        gpt2 ? layer_norm_with_skip(x, ln_1->weight_as(x.dtype()), ln_1->bias_as(x.dtype()),
                                    ln_1->eps)
             : rms_norm_with_skip(x, input_layernorm->weight_as(x.dtype()), input_layernorm->eps);
  } else {
    n1 = gpt2 ? ln_1->forward(x) : input_layernorm->forward(x);
  }
  Tensor a = attn->forward(n1, compute, rc, drop, train);
  std::pair<Tensor, Tensor> hn;
  if (gpt2) {
    hn = add_layer_norm(a, skip, ln_2->weight_as(a.dtype()), ln_2->bias_as(a.dtype()), ln_2->eps);
  } else {
    hn = add_rms_norm(a, skip, post_attention_layernorm->weight_as(a.dtype()),
                      post_attention_layernorm->eps);
  }
  // The second residual add in the MLP's last GEMM: only where it is exact (no dropout between)
  // and the GEMM is 16-bit on CUDA (the Mlp itself keeps fp8 / tensor-parallel GEMMs unfused).
  const bool no_dropout = spec.dropout == 0 || !train;
  const bool epilogue =
      resid_epilogue && no_dropout &&
      ((x.device().is_cuda() && (compute == DType::kBF16 || compute == DType::kF16)) ||
       fuse_on_cpu);
  if (epilogue) return mlp->forward(hn.second, compute, rc, hn.first);
  Tensor m = maybe_dropout(mlp->forward(hn.second, compute, rc), spec.dropout, drop, train);
  return add(hn.first, m);
}

uint64_t Block::init_counters(const ModelSpec& s) {
  // The weights every block draws (biases and norms are constants); the stage test fails if this
  // disagrees with what the constructors draw.
  const int64_t c = s.d_model, f = s.d_ff, d = s.head_dim();
  if (is_gpt2(s)) return randn_counters(3 * c * c + c * c + f * c + c * f);
  return randn_counters(s.n_head * d * c + 2 * s.n_kv_head * d * c + c * s.n_head * d + 3 * f * c);
}

Transformer::Transformer(const ModelSpec& s, uint64_t seed, const StageSpec& stage)
    : LanguageModel(s) {
  KILN_CHECK(s.n_head > 0 && s.d_model % s.n_head == 0)
      << "model: n_head " << s.n_head << " must divide d_model " << s.d_model;
  KILN_CHECK(s.n_kv_head > 0 && s.n_head % s.n_kv_head == 0)
      << "model: n_kv_head " << s.n_kv_head << " must divide n_head " << s.n_head;
  stage_ = stage;
  if (stage_.end_block < 0) stage_.end_block = s.n_layer;
  const int64_t first = stage_.first_block, end = stage_.end_block;
  KILN_CHECK(0 <= first && first <= end && end <= s.n_layer)
      << "model stage: blocks [" << first << ", " << end << ") outside the model's " << s.n_layer;
  // Every part draws from one generator in the whole model's order; a part this stage leaves out
  // reserves (skips) exactly the counters it would have drawn, so the rest draw the same numbers.
  Generator gen(seed);
  const bool gpt2 = is_gpt2(s);
  const bool tied_head = stage_.head && s.tied_embeddings;
  if (stage_.embedding || tied_head) {
    wte = register_module(gpt2 ? "wte" : "embed_tokens",
                          std::make_shared<nn::Embedding>(s.padded_vocab(), s.d_model, s.init_std,
                                                          gen, s.param_dtype));
  } else {
    gen.reserve(randn_counters(s.padded_vocab() * s.d_model));
  }
  if (gpt2 && stage_.embedding) {
    wpe = register_module("wpe", std::make_shared<nn::Embedding>(s.max_seq_len, s.d_model,
                                                                 s.init_std, gen, s.param_dtype));
  } else if (gpt2) {
    gen.reserve(randn_counters(s.max_seq_len * s.d_model));
  }
  gen.reserve(static_cast<uint64_t>(first) * Block::init_counters(s));
  for (int64_t i = first; i < end; ++i)
    h.push_back(register_module((gpt2 ? "h." : "layers.") + std::to_string(i),
                                std::make_shared<Block>(s, gen)));
  gen.reserve(static_cast<uint64_t>(s.n_layer - end) * Block::init_counters(s));
  if (stage_.head) {
    if (gpt2) {
      ln_f = register_module(
          "ln_f", std::make_shared<nn::LayerNorm>(s.d_model, s.norm_eps, s.bias, s.param_dtype));
    } else {
      norm = register_module("norm",
                             std::make_shared<nn::RMSNorm>(s.d_model, s.norm_eps, s.param_dtype));
    }
    if (!s.tied_embeddings) {
      lm_head = register_module(
          "lm_head", std::make_shared<nn::Linear>(s.d_model, s.padded_vocab(), false, s.init_std,
                                                  gen, s.param_dtype));
    }
  }
  dropout_gen_ = Generator(seed ^ 0x5eed);
}

Tensor Transformer::embed(const Tensor& ids) {
  KILN_CHECK(stage_.embedding) << "model: this stage has no embedding";
  KILN_CHECK(ids.dim() == 2) << "model: ids must be (B, T), got " << ids.str();
  const int64_t t = ids.size(1);
  KILN_CHECK(t <= spec_.max_seq_len)
      << "model: sequence length " << t << " exceeds max_seq_len " << spec_.max_seq_len;
  Tensor x = wte->forward(ids, compute_);
  if (wpe) x = add(x, narrow(nn::to_compute(wpe->weight, compute_), 0, 0, t));
  x = maybe_dropout(x, spec_.dropout, dropout_gen_, training());
  return embedding_output_hook_ ? embedding_output_hook_(x) : x;
}

void Transformer::set_fp8(bool on) {
  LanguageModel::set_fp8(on);
  for (const std::shared_ptr<Block>& b : h) {
    for (const auto& l : {b->attn->c_attn, b->attn->c_proj, b->attn->q_proj, b->attn->k_proj,
                          b->attn->v_proj, b->attn->o_proj, b->mlp->c_fc, b->mlp->c_proj,
                          b->mlp->gate_proj, b->mlp->up_proj, b->mlp->down_proj}) {
      if (l) l->fp8 = on;
    }
  }
}

std::vector<std::vector<int>> Transformer::block_parameter_indices() const {
  std::vector<std::vector<int>> out(h.size());
  const std::vector<nn::Parameter> params = parameters();
  const std::string prefix = spec_.family == Family::kGPT2 ? "h." : "layers.";
  for (int i = 0; i < static_cast<int>(params.size()); ++i) {
    const std::string& n = params[i].name;
    if (n.rfind(prefix, 0) != 0) continue;
    out[std::stoi(n.substr(prefix.size())) - first_block()].push_back(i);
  }
  return out;
}

Tensor Transformer::run_block(int i, const Tensor& x) {
  if (block_hook_) {
    return block_hook_(i, x, [this, i](const Tensor& in) { return run_block_unhooked(i, in); });
  }
  return run_block_unhooked(i, x);
}

Tensor Transformer::run_block_unhooked(int i, const Tensor& x) {
  Block* b = h[i].get();
  const DType c = compute_;
  const bool train = training();
  Generator& drop = dropout_gen_;
  if (recompute_ == Recompute::kFull) {
    return checkpoint(
        [b, c, &drop, train](const Tensor& in) {
          return b->forward(in, c, Recompute::kNone, drop, train);
        },
        x, &drop);
  }
  return b->forward(x, c, recompute_, drop, train);
}

Tensor Transformer::head(const Tensor& x) {
  KILN_CHECK(stage_.head) << "model: this stage has no head";
  Tensor n = ln_f ? ln_f->forward(x) : norm->forward(x);
  const Tensor& w = lm_head ? lm_head->weight : wte->weight;
  if (classifier_hooks_.logits) return classifier_hooks_.logits(n, nn::to_compute(w, compute_));
  if (lm_head) return lm_head->forward(n, compute_);
  return linear(n, nn::to_compute(w, compute_));
}

Tensor Transformer::forward(const Tensor& ids) {
  Tensor x = embed(ids);
  for (size_t i = 0; i < h.size(); ++i) x = run_block(static_cast<int>(i), x);
  return head(x);
}

Tensor LanguageModel::loss(const Tensor& ids, const Tensor& targets) {
  Tensor logits = forward(ids);
  const int64_t v = logits.size(-1);
  return cross_entropy(logits.reshape({-1, v}), targets.reshape({-1}));
}

Tensor Transformer::head_loss(const Tensor& x, const Tensor& targets) {
  KILN_CHECK(stage_.head) << "model: this stage has no head";
  Tensor n = ln_f ? ln_f->forward(x) : norm->forward(x);
  const Tensor& w = lm_head ? lm_head->weight : wte->weight;
  if (classifier_hooks_.loss)
    return classifier_hooks_.loss(n, nn::to_compute(w, compute_), targets);
  // Classifier and loss fused: on CUDA the (B*T, V) logits are never stored whole.
  return linear_cross_entropy(n.reshape({-1, n.size(-1)}), nn::to_compute(w, compute_),
                              targets.reshape({-1}));
}

Tensor Transformer::loss(const Tensor& ids, const Tensor& targets) {
  Tensor x = embed(ids);
  for (size_t i = 0; i < h.size(); ++i) x = run_block(static_cast<int>(i), x);
  return head_loss(x, targets);
}

parallel::TpPlan Transformer::tensor_parallel_plan() const {
  using parallel::TpStyle;
  parallel::TpPlan plan;
  auto add = [&plan](const std::string& name, TpStyle style, int dim, int partitions = 1) {
    plan.entries.push_back({name, style, dim, partitions});
  };
  // A linear layer: column splits weight and bias along OUT; row splits the weight along IN and
  // keeps the bias whole.
  auto linear_layer = [&](const std::string& m, const nn::Linear& l, TpStyle style,
                          int partitions = 1) {
    add(m + ".weight", style, style == TpStyle::kColumn ? 0 : 1, partitions);
    if (l.bias.defined()) add(m + ".bias", style, style == TpStyle::kColumn ? 0 : -1, partitions);
  };
  auto norm_layer = [&](const std::string& m, bool bias) {
    add(m + ".weight", TpStyle::kSequence, -1);
    if (bias) add(m + ".bias", TpStyle::kSequence, -1);
  };
  const bool gpt2 = is_gpt2(spec_);
  if (wte) add(std::string(gpt2 ? "wte" : "embed_tokens") + ".weight", TpStyle::kVocab, 0);
  if (wpe) add("wpe.weight", TpStyle::kReplicated, -1);
  for (size_t i = 0; i < h.size(); ++i) {
    const Block& b = *h[i];
    const std::string p = (gpt2 ? "h." : "layers.") + std::to_string(first_block() + i) + ".";
    if (gpt2) {
      norm_layer(p + "ln_1", b.ln_1->bias.defined());
      linear_layer(p + "attn.c_attn", *b.attn->c_attn, TpStyle::kColumn, 3);  // q, k, v
      linear_layer(p + "attn.c_proj", *b.attn->c_proj, TpStyle::kRow);
      norm_layer(p + "ln_2", b.ln_2->bias.defined());
      linear_layer(p + "mlp.c_fc", *b.mlp->c_fc, TpStyle::kColumn);
      linear_layer(p + "mlp.c_proj", *b.mlp->c_proj, TpStyle::kRow);
    } else {
      norm_layer(p + "input_layernorm", false);
      linear_layer(p + "self_attn.q_proj", *b.attn->q_proj, TpStyle::kColumn);
      linear_layer(p + "self_attn.k_proj", *b.attn->k_proj, TpStyle::kColumn);
      linear_layer(p + "self_attn.v_proj", *b.attn->v_proj, TpStyle::kColumn);
      linear_layer(p + "self_attn.o_proj", *b.attn->o_proj, TpStyle::kRow);
      norm_layer(p + "post_attention_layernorm", false);
      linear_layer(p + "mlp.gate_proj", *b.mlp->gate_proj, TpStyle::kColumn);
      linear_layer(p + "mlp.up_proj", *b.mlp->up_proj, TpStyle::kColumn);
      linear_layer(p + "mlp.down_proj", *b.mlp->down_proj, TpStyle::kRow);
    }
  }
  if (ln_f) norm_layer("ln_f", ln_f->bias.defined());
  if (norm) norm_layer("norm", false);
  if (lm_head) add("lm_head.weight", TpStyle::kVocab, 0);
  return plan;
}

ModelSpec spec_from_config(const ModelConfig& m) {
  ModelSpec s;
  s.family = m.family() == ModelConfig::LLAMA ? Family::kLlama : Family::kGPT2;
  s.n_layer = m.n_layer();
  s.n_head = m.n_head();
  s.n_kv_head = m.n_kv_head();
  s.d_model = m.d_model();
  s.d_ff = m.d_ff();
  s.vocab_size = m.vocab_size();
  s.max_seq_len = m.max_seq_len();
  s.rope_theta = m.rope_theta();
  s.norm_eps = m.norm_eps();
  s.tied_embeddings = m.tied_embeddings();
  s.bias = m.bias();
  s.scale_residual_init = m.scale_residual_init();
  s.vocab_pad_multiple = std::max(1, m.vocab_pad_multiple());
  s.dropout = m.dropout();
  s.init_std = m.init_std();
  return s;
}

std::unique_ptr<LanguageModel> build_model(const ModelSpec& spec, uint64_t seed) {
  return std::make_unique<Transformer>(spec, seed);
}

std::unique_ptr<LanguageModel> build_stage(const ModelSpec& spec, uint64_t seed,
                                           const StageSpec& stage) {
  return std::make_unique<Transformer>(spec, seed, stage);
}

}  // namespace kiln::models

// kiln plan's memory model, part 1: the parameter list of a stage, DataParallel's units and the
// optimizer's pieces (parameters, gradients, optimizer state as they are allocated), the layouts,
// and the assembly of the peak from the candidate moments of a step.
#include "launch/memory_plan.h"

#include <algorithm>
#include <cstdio>

#include "core/block_size.h"
#include "core/check.h"

namespace kiln::launch {

using plan_internal::ParamInfo;

int64_t plan_alloc(const PlanInput& in, int64_t bytes) {
  if (bytes <= 0) return 0;
  const size_t b = static_cast<size_t>(bytes);
  return static_cast<int64_t>(in.cuda ? cuda_block_size(b) : cpu_block_size(b));
}

namespace plan_internal {
namespace {

bool first_stage(int pp, int stage) { return stage == 0 || pp <= 1; }
bool last_stage(int pp, int stage) { return stage == pp - 1 || pp <= 1; }

// One block's parameters in registration order (models/transformer.cc), sharded 1/tp: column
// layers split OUT (weight rows and bias), row layers split IN (the bias stays whole).
void block_params(const models::ModelSpec& s, int tp, int b, std::vector<ParamInfo>* out) {
  const int64_t c = s.d_model, f = s.d_ff / tp, d = s.head_dim();
  const std::string p = (s.family == models::Family::kGPT2 ? "h." : "layers.") + std::to_string(b);
  auto add = [&](const std::string& n, int64_t numel) { out->push_back({p + "." + n, numel, b}); };
  auto linear = [&](const std::string& n, int64_t in, int64_t o, bool bias) {
    add(n + ".weight", in * o);
    if (bias) add(n + ".bias", o);
  };
  if (s.family == models::Family::kGPT2) {
    const int64_t w = c / tp;  // local heads x head_dim
    linear("ln_1", 1, c, s.bias);
    linear("attn.c_attn", c, 3 * w, s.bias);
    add("attn.c_proj.weight", w * c);
    if (s.bias) add("attn.c_proj.bias", c);
    linear("ln_2", 1, c, s.bias);
    linear("mlp.c_fc", c, f, s.bias);
    add("mlp.c_proj.weight", f * c);
    if (s.bias) add("mlp.c_proj.bias", c);
    return;
  }
  const int64_t q = s.n_head / tp * d, kv = s.n_kv_head / tp * d;
  add("input_layernorm.weight", c);
  linear("self_attn.q_proj", c, q, s.bias);
  linear("self_attn.k_proj", c, kv, s.bias);
  linear("self_attn.v_proj", c, kv, s.bias);
  add("self_attn.o_proj.weight", q * c);
  if (s.bias) add("self_attn.o_proj.bias", c);
  add("post_attention_layernorm.weight", c);
  linear("mlp.gate_proj", c, f, s.bias);
  linear("mlp.up_proj", c, f, s.bias);
  add("mlp.down_proj.weight", f * c);
  if (s.bias) add("mlp.down_proj.bias", c);
}

struct Unit {
  std::vector<int64_t> numels;  // its parameters
  int64_t numel = 0, padded = 0, shard = 0;
  bool root = false;
};

// DataParallel::build_units: stage 3 one unit per block plus a root unit; else buckets of about
// bucket_mb in reverse registration order.
std::vector<Unit> make_units(const std::vector<ParamInfo>& ps, const PlanLayout& l,
                             double bucket_mb) {
  std::vector<Unit> units;
  if (l.zero == 3) {
    Unit root;
    root.root = true;
    for (const ParamInfo& p : ps)
      if (p.block < 0) root.numels.push_back(p.numel);
    int last_block = -1;
    for (const ParamInfo& p : ps) {
      if (p.block < 0) continue;
      if (p.block != last_block) units.push_back(Unit());
      last_block = p.block;
      units.back().numels.push_back(p.numel);
    }
    units.push_back(root);
  } else {
    const int64_t cap = static_cast<int64_t>(bucket_mb * 1024 * 1024 / 4);
    Unit cur;
    int64_t size = 0;
    for (auto it = ps.rbegin(); it != ps.rend(); ++it) {
      if (!cur.numels.empty() && size + it->numel > cap) {
        units.push_back(cur);
        cur = Unit();
        size = 0;
      }
      cur.numels.push_back(it->numel);
      size += it->numel;
    }
    if (!cur.numels.empty()) units.push_back(cur);
  }
  for (Unit& u : units) {
    for (int64_t n : u.numels) u.numel += n;
    u.padded = std::max<int64_t>(l.dp, (u.numel + l.dp - 1) / l.dp * l.dp);
    u.shard = u.padded / l.dp;
  }
  return units;
}

// The optimizer's pieces of a unit on rank 0 (the first shard): whole parameters at stage 0,
// their intersections with the shard otherwise. Each piece gets its own state tensors.
std::vector<int64_t> pieces(const Unit& u, int zero) {
  if (zero == 0) return u.numels;
  std::vector<int64_t> out;
  int64_t off = 0;
  for (int64_t n : u.numels) {
    const int64_t lo = std::max<int64_t>(off, 0), hi = std::min<int64_t>(off + n, u.shard);
    if (lo < hi) out.push_back(hi - lo);
    off += n;
  }
  return out;
}

}  // namespace

std::vector<std::pair<int64_t, int64_t>> stage_chunks(const models::ModelSpec& s,
                                                      const PlanLayout& l, int stage) {
  const int chunks = l.pp * l.v;
  const std::vector<int64_t> layers =
      l.layers.empty() ? std::vector<int64_t>(chunks, s.n_layer / chunks) : l.layers;
  KILN_CHECK_EQ(static_cast<int>(layers.size()), chunks) << "plan: layers per virtual stage";
  std::vector<int64_t> start(chunks + 1, 0);
  for (int i = 0; i < chunks; ++i) start[i + 1] = start[i] + layers[i];
  KILN_CHECK_EQ(start[chunks], s.n_layer) << "plan: the layers per virtual stage sum to n_layer";
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int c = 0; c < l.v; ++c) {
    const int vs = c * l.pp + stage;
    out.push_back({start[vs], start[vs + 1]});
  }
  return out;
}

std::vector<ParamInfo> stage_params(const models::ModelSpec& s, int tp, int pp, int stage) {
  PlanLayout l;
  l.tp = tp;
  l.pp = pp;
  return stage_params(s, l, stage);
}

std::vector<ParamInfo> stage_params(const models::ModelSpec& s, const PlanLayout& l, int stage) {
  std::vector<ParamInfo> out;
  const bool gpt2 = s.family == models::Family::kGPT2;
  const int64_t c = s.d_model, v = s.padded_vocab() / l.tp;
  const bool first = first_stage(l.pp, stage), last = last_stage(l.pp, stage);
  if (first || (last && s.tied_embeddings))
    out.push_back({gpt2 ? "wte.weight" : "embed_tokens.weight", v * c, -1});
  if (gpt2 && first) out.push_back({"wpe.weight", s.max_seq_len * c, -1});
  for (const auto& [begin, end] : stage_chunks(s, l, stage))
    for (int64_t b = begin; b < end; ++b) block_params(s, l.tp, static_cast<int>(b), &out);
  if (last) {
    out.push_back({gpt2 ? "ln_f.weight" : "norm.weight", c, -1});
    if (gpt2 && s.bias) out.push_back({"ln_f.bias", c, -1});
    if (!s.tied_embeddings) out.push_back({"lm_head.weight", v * c, -1});
  }
  return out;
}

StateBytes state_bytes(const PlanInput& in, const PlanLayout& l, int stage) {
  const std::vector<ParamInfo> ps = stage_params(in.spec, l, stage);
  const std::vector<Unit> units = make_units(ps, l, in.bucket_mb);
  const int64_t cb = static_cast<int64_t>(dtype_size(in.compute));
  const int states = in.adamw ? 2 : 1;
  auto a = [&](int64_t bytes) { return plan_alloc(in, bytes); };
  StateBytes s;
  s.units = static_cast<int>(units.size());
  int64_t grad_arena = 0;  // stages 0/1: every unit's flat_grad in one allocation, 256-byte steps
  for (const Unit& u : units) {
    s.largest_unit = std::max(s.largest_unit, u.numel);
    s.params += l.zero < 3 ? a(u.padded * 4) : a(u.shard * 4);  // flat fp32, or the own shard
    if (l.zero <= 1) grad_arena += (u.padded + 63) / 64 * 64;   // flat_grad
    if (l.zero >= 1) s.grads += a(u.shard * 4);                 // grad_shard
    for (int64_t n : pieces(u, l.zero)) s.optimizer += states * a(n * 4);
    if (l.zero == 1 || l.zero == 2) s.step_temp = std::max(s.step_temp, a(u.shard * 4));
    if (l.zero >= 2 && !u.root) s.staging = std::max(s.staging, a(u.padded * 4));
    if (l.zero >= 2 && !u.root)
      s.in_flight = std::max(s.in_flight, a(u.padded * 4) + a(u.shard * 4));
    if (l.zero == 3 && u.root) s.root_staging = a(u.padded * 4);
    if (l.zero == 3) {
      // Gathered in the compute dtype; the send buffer is the shard converted (no copy in f32).
      const int64_t g = a(u.padded * cb) + (cb == 4 ? 0 : a(u.shard * cb));
      if (u.root)
        s.gathered_root = g;
      else
        s.gathered_block = std::max(s.gathered_block, g);
    }
  }
  if (grad_arena > 0) s.grads += a(grad_arena * 4);
  return s;
}

}  // namespace plan_internal

namespace {

using plan_internal::BlockBytes;
using plan_internal::HeadBytes;
using plan_internal::StateBytes;

std::string mib_str(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// One moment of a step: the terms live then.
struct Moment {
  std::string at;
  std::vector<MemoryTerm> terms;
  void add(const std::string& name, int64_t bytes, const std::string& how) {
    if (bytes > 0) terms.push_back({name, bytes, how});
  }
  int64_t total() const {
    int64_t t = 0;
    for (const MemoryTerm& m : terms) t += m.bytes;
    return t;
  }
};

// The persistent terms every moment of the step holds.
Moment persistent(const PlanInput& in, const PlanLayout& l, const StateBytes& st) {
  Moment m;
  const char* shard = l.zero == 3 ? "fp32 shard (ZeRO-3)" : "fp32 master, flat units";
  m.add("parameters", st.params, shard);
  m.add("gradients", st.grads,
        l.zero == 0   ? "fp32, flat units"
        : l.zero == 1 ? "fp32 flat units + the rank's shard"
                      : "fp32, the rank's shard");
  m.add("optimizer state", st.optimizer,
        std::string(in.adamw ? "AdamW m and v" : "SGD momentum") +
            (l.zero >= 1 ? ", fp32, 1/dp" : ", fp32"));
  const int64_t n = l.micro_batch * in.seq_len;
  m.add("batch", 2 * plan_alloc(in, n * 4), "inputs and targets, i32");
  return m;
}

// The micro-batches (chunk passes) whose activations `stage` holds at once, from the schedule's
// theory (1F1B: pp - stage; GPipe: the flush; ZB-H1: pp; interleaved: more, over v chunks), and
// the blocks each holds (the largest of the stage's chunks: an upper bound when they differ).
std::pair<int64_t, int64_t> in_flight(const PlanInput& in, const PlanLayout& l, int stage) {
  int64_t blocks = 0;
  for (const auto& [begin, end] : plan_internal::stage_chunks(in.spec, l, stage))
    blocks = std::max(blocks, end - begin);
  const parallel::pipeline::ScheduleSpec sched{
      l.schedule, l.pp, static_cast<int>(l.flush > 0 ? l.flush : l.accum), l.v, false};
  return {l.pp > 1 ? parallel::pipeline::theory_peak_in_flight(sched, stage) : 1, blocks};
}

// The candidate moments of a step on pipeline stage `stage`; the peak is the largest.
std::vector<Moment> moments(const PlanInput& in, const PlanLayout& l, int stage) {
  const StateBytes st = plan_internal::state_bytes(in, l, stage);
  const BlockBytes b = plan_internal::block_bytes(in, l);
  const HeadBytes h = plan_internal::head_bytes(in, l);
  const bool first = stage == 0, last = stage == l.pp - 1;
  const bool full = l.recompute == models::Recompute::kFull;
  const auto [flight, blocks] = in_flight(in, l, stage);
  const Moment base = persistent(in, l, st);
  const std::string per = std::to_string(flight * blocks) + " block(s) x " +
                          mib_str(full ? b.input : b.input + b.saved) +
                          (full ? " (block inputs only)" : "");
  auto with_gathered = [&](Moment m, bool blocks_too) {
    m.add("ZeRO-3 gathered", st.gathered_root + (blocks_too ? 2 * st.gathered_block : 0),
          blocks_too ? "root unit + 2 blocks, compute dtype" : "root unit, compute dtype");
    return m;
  };
  auto with_activations = [&](Moment m) {
    m.add("activations", flight * blocks * (full ? b.input : b.input + b.saved), per);
    if (!full) m.add("weight copies", flight * blocks * b.weights, "16-bit, saved by linears");
    return m;
  };
  std::vector<Moment> out;
  Moment start;
  start.at = "model build";
  int64_t each = 0;
  for (const auto& p : plan_internal::stage_params(in.spec, l, stage))
    each += plan_alloc(in, p.numel * 4);
  start.add("parameters (as built)", each, "fp32, one tensor each");
  start.add("flat unit", plan_alloc(in, st.largest_unit * 4), "DataParallel's copy");
  out.push_back(start);
  if (last) {
    Moment m = with_activations(with_gathered(base, false));  // blocks are gathered again later
    m.at = "head backward";
    m.add("head input", flight * b.input, "last block output");
    m.add(
        "head saved", h.saved,
        in.cuda ? "dx, dW of the fused classifier + loss" : "final norm out, logits, log-sum-exp");
    m.add("head temporaries", h.bwd_extra,
          in.cuda ? "weight copy + a chunk of logits" : "logits gradient, dx, dW");
    out.push_back(m);
  }
  Moment m = with_activations(with_gathered(base, true));
  m.at = full ? "backward of the last block (recomputed)" : "backward of the last block";
  // ZeRO-2/3: the unit being filled (its flat fp32 staging; ZeRO-3 also the root unit's, filled
  // from the final norm's gradients to the embedding's) and, with several units, up to two
  // launched ones (staging + received shard). Under full recompute a ZeRO-3 block's staging comes
  // after the peak: its gradients reach DataParallel only when the checkpoint's grad() returns.
  const int others = l.zero == 3 ? st.units - 2 : st.units - 1;
  m.add("gradient staging",
        l.zero >= 2 ? (full && l.zero == 3 ? 0 : st.staging) + st.root_staging +
                          std::min(std::max(others, 0), 2) * st.in_flight
                    : 0,
        "ZeRO-2/3 units filling / in flight, fp32");
  if (last) m.add("held classifier gradient", h.held_dw, "tied wte, until the embedding");
  if (full) {
    m.add("recomputed block", b.saved + b.weights, "one block re-run with the tape on");
    m.add("block parameter gradients", b.param_grads, "held by grad() in the checkpoint");
  }
  m.add("block backward temporaries", b.bwd_extra, "grad in, grad of MLP input, dW");
  out.push_back(m);
  if (first) {
    Moment e = with_gathered(base, false);
    e.at = "embedding backward";
    e.add("gradient staging", l.zero >= 2 ? st.in_flight + st.root_staging : 0,
          "ZeRO-2/3 units in flight, fp32");
    e.add("table gradients", h.embed_bwd, "dense dW (+ held classifier dW, their sum)");
    out.push_back(e);
    Moment f = with_gathered(base, true);
    f.at = "embedding forward";
    f.add("embedding temporaries", h.embed_fwd, "lookup, + positions");
    out.push_back(f);
  }
  Moment o = base;
  o.at = "optimizer step";
  o.add("step temporaries", st.step_temp, "all-gather input (ZeRO-1/2)");
  out.push_back(o);
  return out;
}

}  // namespace

MemoryPlan plan_memory(const PlanInput& in, const PlanLayout& layout) {
  KILN_CHECK(layout.pp >= 1 && layout.v >= 1) << "plan: pp and v must be >= 1";
  KILN_CHECK(!layout.layers.empty() || in.spec.n_layer % (layout.pp * layout.v) == 0)
      << "plan: without layers per virtual stage, pp x v must divide n_layer";
  MemoryPlan best;
  best.peak = -1;
  for (int stage = 0; stage < layout.pp; ++stage) {
    for (const Moment& m : moments(in, layout, stage)) {
      if (m.total() <= best.peak) continue;
      best.layout = layout;
      best.stage = stage;
      best.terms = m.terms;
      best.peak = m.total();
      best.peak_at = m.at;
    }
  }
  return best;
}

std::vector<PlanLayout> all_layouts(const models::ModelSpec& spec, int world, int64_t global_batch,
                                    int64_t micro_batch) {
  std::vector<PlanLayout> out;
  for (int tp = 1; tp <= world; ++tp) {
    if (world % tp || spec.n_head % tp || spec.n_kv_head % tp || spec.d_ff % tp) continue;
    for (int pp = 1; pp <= world / tp; ++pp) {
      if ((world / tp) % pp || spec.n_layer % pp) continue;
      const int dp = world / tp / pp;
      const int64_t micro = micro_batch > 0 ? micro_batch : global_batch / dp;
      if (micro <= 0 || global_batch % (micro * dp)) continue;
      for (int zero = 0; zero <= 3; ++zero) {
        if (zero > 0 && dp == 1) continue;  // nothing to shard over
        for (models::Recompute r :
             {models::Recompute::kNone, models::Recompute::kSelective, models::Recompute::kFull}) {
          PlanLayout l;
          l.dp = dp;
          l.tp = tp;
          l.pp = pp;
          l.zero = zero;
          l.recompute = r;
          l.micro_batch = micro;
          l.accum = global_batch / (micro * dp);
          out.push_back(l);
        }
      }
    }
  }
  return out;
}

}  // namespace kiln::launch

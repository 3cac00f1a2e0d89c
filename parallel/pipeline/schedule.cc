// The schedules: each stage's compute order (GPipe, 1F1B, interleaved 1F1B as Megatron orders it,
// ZB-H1), then the messages placed by a unit-time simulation so that all stages agree on one
// global message order (see schedule.h).
#include "parallel/pipeline/schedule.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace kiln::parallel::pipeline {
namespace {

Action compute(Op op, int micro, int chunk = 0) { return {op, micro, chunk, -1}; }

std::vector<Action> gpipe(const ScheduleSpec& s) {
  std::vector<Action> out;
  for (int j = 0; j < s.micro_batches; ++j) out.push_back(compute(Op::kForward, j));
  for (int j = 0; j < s.micro_batches; ++j) out.push_back(compute(Op::kBackward, j));
  return out;
}

// Warm-up forwards (p - stage - 1), then one forward and one backward in turn, then the
// remaining backwards.
std::vector<Action> one_f_one_b(const ScheduleSpec& s, int stage) {
  const int m = s.micro_batches, warm = std::min(s.stages - stage - 1, m);
  std::vector<Action> out;
  for (int j = 0; j < warm; ++j) out.push_back(compute(Op::kForward, j));
  for (int j = 0; j + warm < m; ++j) {
    out.push_back(compute(Op::kForward, j + warm));
    out.push_back(compute(Op::kBackward, j));
  }
  for (int j = m - warm; j < m; ++j) out.push_back(compute(Op::kBackward, j));
  return out;
}

// 1F1B's order with the backward split; stage s defers its weight passes by s micro-batches
// (the last stage most), so that the input gradients reach stage 0 sooner and the deferred
// weight passes fill the cool-down. At most p forwards await their weight pass on any stage,
// as 1F1B's stage 0 holds.
std::vector<Action> zb_h1(const ScheduleSpec& s, int stage) {
  const int m = s.micro_batches, warm = std::min(s.stages - stage - 1, m), defer = stage;
  std::vector<Action> out;
  for (int j = 0; j < warm; ++j) out.push_back(compute(Op::kForward, j));
  int weights = 0;
  for (int j = 0; j < m; ++j) {
    if (j + warm < m) out.push_back(compute(Op::kForward, j + warm));
    out.push_back(compute(Op::kBackwardInput, j));
    if (j - defer >= 0) out.push_back(compute(Op::kBackwardWeight, weights++));
  }
  while (weights < m) out.push_back(compute(Op::kBackwardWeight, weights++));
  return out;
}

// Megatron's interleaved order: forward k runs micro-batch (k / pv) p + k % p of chunk
// (k / p) % v; backward k the same micro-batch of chunk v - 1 - (k / p) % v.
std::vector<Action> interleaved(const ScheduleSpec& s, int stage) {
  const int p = s.stages, v = s.virtual_stages, m = s.micro_batches, total = v * m;
  auto micro = [&](int k) { return (k / (p * v)) * p + k % p; };
  auto chunk = [&](int k) { return (k / p) % v; };
  const int warm = m == p ? total : std::min(total, 2 * (p - stage - 1) + (v - 1) * p);
  std::vector<Action> out;
  for (int k = 0; k < warm; ++k) out.push_back(compute(Op::kForward, micro(k), chunk(k)));
  for (int k = 0; k + warm < total; ++k) {
    out.push_back(compute(Op::kForward, micro(k + warm), chunk(k + warm)));
    out.push_back(compute(Op::kBackward, micro(k), v - 1 - chunk(k)));
  }
  for (int k = std::max(0, total - warm); k < total; ++k)
    out.push_back(compute(Op::kBackward, micro(k), v - 1 - chunk(k)));
  return out;
}

std::vector<Action> compute_order(const ScheduleSpec& s, int stage) {
  switch (s.kind) {
    case ScheduleKind::kGPipe:
      return gpipe(s);
    case ScheduleKind::k1F1B:
      return one_f_one_b(s, stage);
    case ScheduleKind::kZBH1:
      return zb_h1(s, stage);
    case ScheduleKind::kInterleaved1F1B:
      return interleaved(s, stage);
  }
  return {};
}

bool is_input_pass(Op op) { return op == Op::kBackward || op == Op::kBackwardInput; }

// A message: who makes it (stage, and the compute that produces it), who takes it.
struct Message {
  Op send, recv;
  int micro, from, from_chunk, to, to_chunk;
};

// Compute identity across stages: (op class, micro, virtual stage).
using Key = std::tuple<int, int, int>;
Key key(Op op, int micro, int vs) {
  return {is_input_pass(op) ? 1 : static_cast<int>(op), micro, vs};
}

}  // namespace

bool splits_backward(ScheduleKind kind) { return kind == ScheduleKind::kZBH1; }

std::string schedule_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kGPipe:
      return "GPIPE";
    case ScheduleKind::k1F1B:
      return "ONE_F_ONE_B";
    case ScheduleKind::kInterleaved1F1B:
      return "INTERLEAVED_1F1B";
    case ScheduleKind::kZBH1:
      return "ZB_H1";
  }
  return "?";
}

absl::Status check_schedule(const ScheduleSpec& s) {
  const std::string name = schedule_name(s.kind);
  if (s.stages < 1) return absl::InvalidArgumentError("parallel.pp: must be >= 1");
  if (s.micro_batches < 1)
    return absl::InvalidArgumentError("parallel.pipeline_micro_batches: must be >= 1");
  if (s.virtual_stages < 1 || (s.kind != ScheduleKind::kInterleaved1F1B && s.virtual_stages != 1))
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.virtual_stages: ", s.virtual_stages, " with ", name,
                     " (only INTERLEAVED_1F1B runs more than one model chunk per stage)"));
  if (s.kind != ScheduleKind::kGPipe && s.micro_batches < s.stages)
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.pipeline_micro_batches: ", name, " needs at least pp (", s.stages,
                     ") micro-batches per flush to fill the pipeline, got ", s.micro_batches));
  if (s.kind == ScheduleKind::kInterleaved1F1B && s.micro_batches % s.stages != 0)
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.pipeline_micro_batches: INTERLEAVED_1F1B needs a multiple of pp (",
                     s.stages, ") micro-batches per flush, got ", s.micro_batches));
  return absl::OkStatus();
}

namespace {

struct Timed {
  Action a;
  double start = 0, end = 0;
};

// Runs every stage's compute order with unit times (forward 1, backward 2 = input 1 + weight 1),
// each action starting when its stage is free and its inputs exist. Returns the timed lists.
std::vector<std::vector<Timed>> simulate(const ScheduleSpec& s,
                                         const std::vector<std::vector<Action>>& order) {
  const int p = s.stages, last_vs = p * s.virtual_stages - 1;
  std::map<Key, double> done;
  std::vector<std::vector<Timed>> out(p);
  std::vector<double> free(p, 0);
  std::vector<size_t> next(p, 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int st = 0; st < p; ++st) {
      if (next[st] >= order[st].size()) continue;
      const Action& a = order[st][next[st]];
      const int vs = virtual_stage(s, st, a.chunk);
      std::vector<Key> deps;
      if (a.op == Op::kForward && vs > 0) deps.push_back(key(Op::kForward, a.micro, vs - 1));
      if (is_input_pass(a.op)) {
        deps.push_back(key(Op::kForward, a.micro, vs));
        if (vs < last_vs) deps.push_back(key(Op::kBackward, a.micro, vs + 1));
      }
      if (a.op == Op::kBackwardWeight) deps.push_back(key(Op::kBackward, a.micro, vs));
      double start = free[st];
      bool ready = true;
      for (const Key& d : deps) {
        auto it = done.find(d);
        ready = ready && it != done.end();
        if (it != done.end()) start = std::max(start, it->second);
      }
      if (!ready) continue;
      const double dur = a.op == Op::kBackward ? 2 : 1;
      out[st].push_back({a, start, start + dur});
      free[st] = start + dur;
      done[key(a.op, a.micro, vs)] = start + dur;
      ++next[st];
      progress = true;
    }
  }
  for (int st = 0; st < p; ++st)
    KILN_CHECK_EQ(next[st], order[st].size())
        << "schedule " << schedule_name(s.kind) << ": stage " << st << " cannot proceed";
  return out;
}

struct Placed {
  double time;
  int cls;  // 0: a message (before a compute starting at the same time), 1: compute
  size_t index;
  Action a;
  bool operator<(const Placed& o) const {
    return std::tie(time, cls, index) < std::tie(o.time, o.cls, o.index);
  }
};

// Each producing compute's messages, in one global order: (producer end, producer stage, ...).
std::vector<std::pair<double, Message>> messages(const ScheduleSpec& s,
                                                 const std::vector<std::vector<Timed>>& timed) {
  const int p = s.stages, last_vs = p * s.virtual_stages - 1;
  std::vector<std::pair<double, Message>> out;
  for (int st = 0; st < p; ++st)
    for (const Timed& t : timed[st]) {
      const int vs = virtual_stage(s, st, t.a.chunk);
      auto add = [&](Op send, Op recv, int to_vs) {
        const int to = to_vs % p;
        if (to != st) out.push_back({t.end, {send, recv, t.a.micro, st, t.a.chunk, to, to_vs / p}});
      };
      if (t.a.op == Op::kForward && vs < last_vs)
        add(Op::kSendActivation, Op::kRecvActivation, vs + 1);
      if (is_input_pass(t.a.op) && vs > 0) add(Op::kSendGrad, Op::kRecvGrad, vs - 1);
      if (is_input_pass(t.a.op) && vs == last_vs && s.tied_embedding &&
          t.a.micro == s.micro_batches - 1)
        add(Op::kSendTied, Op::kRecvTied, 0);
    }
  std::stable_sort(out.begin(), out.end(), [](const auto& x, const auto& y) {
    return std::tie(x.first, x.second.from, x.second.send, x.second.micro) <
           std::tie(y.first, y.second.from, y.second.send, y.second.micro);
  });
  return out;
}

bool is_recv(Op op) {
  return op == Op::kRecvActivation || op == Op::kRecvGrad || op == Op::kRecvTied;
}
bool is_compute(Op op) { return op <= Op::kBackwardWeight; }

// Whether compute `c` reads what receive `r` brings.
bool consumes(const Action& c, const Action& r) {
  if (c.micro != r.micro || c.chunk != r.chunk) return false;
  return r.op == Op::kRecvActivation ? c.op == Op::kForward : is_input_pass(c.op);
}

// Moves every receive as late as it may go: past computes that do not read it, never past its
// reader or another message (so the stage's messages keep the global order). A stage then waits
// for a message only when it needs it, and a late producer does not hold up unrelated work.
void delay_receives(std::vector<Action>* list) {
  for (size_t i = list->size(); i-- > 0;) {
    if (!is_recv((*list)[i].op)) continue;
    size_t j = i;
    while (j + 1 < list->size() && is_compute((*list)[j + 1].op) &&
           !consumes((*list)[j + 1], (*list)[j])) {
      std::swap((*list)[j], (*list)[j + 1]);
      ++j;
    }
  }
}

}  // namespace

std::vector<std::vector<Action>> schedule(const ScheduleSpec& s) {
  KILN_CHECK(check_schedule(s).ok()) << check_schedule(s).message();
  std::vector<std::vector<Action>> order(s.stages);
  for (int st = 0; st < s.stages; ++st) order[st] = compute_order(s, st);
  const std::vector<std::vector<Timed>> timed = simulate(s, order);
  std::vector<std::vector<Placed>> placed(s.stages);
  for (int st = 0; st < s.stages; ++st)
    for (size_t i = 0; i < timed[st].size(); ++i)
      placed[st].push_back({timed[st][i].start, 1, i, timed[st][i].a});
  const auto msgs = messages(s, timed);
  for (size_t i = 0; i < msgs.size(); ++i) {
    const auto& [time, m] = msgs[i];
    placed[m.from].push_back({time, 0, i, {m.send, m.micro, m.from_chunk, m.to}});
    placed[m.to].push_back({time, 0, i, {m.recv, m.micro, m.to_chunk, m.from}});
  }
  std::vector<std::vector<Action>> out(s.stages);
  for (int st = 0; st < s.stages; ++st) {
    std::sort(placed[st].begin(), placed[st].end());
    for (const Placed& x : placed[st]) out[st].push_back(x.a);
    delay_receives(&out[st]);
  }
  return out;
}

std::vector<Action> stage_actions(const ScheduleSpec& spec, int stage) {
  KILN_CHECK(stage >= 0 && stage < spec.stages) << "stage " << stage;
  return schedule(spec)[stage];
}

double theory_makespan(const ScheduleSpec& s, double f, double bi, double w) {
  const double m = s.micro_batches, p = s.stages, v = s.virtual_stages, b = bi + w;
  switch (s.kind) {
    case ScheduleKind::kGPipe:
    case ScheduleKind::k1F1B:
      return (m + p - 1) * (f + b);
    case ScheduleKind::kInterleaved1F1B:
      return (v * m + p - 1) * (f + b);
    case ScheduleKind::kZBH1:
      return m * (f + b) + (p - 1) * (f + bi - w);
  }
  return 0;
}

int theory_peak_in_flight(const ScheduleSpec& s, int stage) {
  const int p = s.stages, m = s.micro_batches, v = s.virtual_stages;
  switch (s.kind) {
    case ScheduleKind::kGPipe:
      return m;
    case ScheduleKind::k1F1B:
      return std::min(m, p - stage);
    case ScheduleKind::kZBH1:
      return std::min(m, p);
    case ScheduleKind::kInterleaved1F1B:
      return m == p ? v * m : std::min(v * m, 2 * (p - stage - 1) + (v - 1) * p + 1);
  }
  return 0;
}

std::string to_string(const Action& a) {
  static const char* kNames[] = {"F",        "B",         "Bi",        "W",         "send_act",
                                 "recv_act", "send_grad", "recv_grad", "send_tied", "recv_tied"};
  std::string s = absl::StrCat(kNames[static_cast<int>(a.op)], "(", a.micro);
  if (a.chunk) absl::StrAppend(&s, ",c", a.chunk);
  if (a.peer >= 0) absl::StrAppend(&s, ",@", a.peer);
  return s + ")";
}

}  // namespace kiln::parallel::pipeline

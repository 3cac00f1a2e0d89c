// The schedules without any communication: the lists of all stages are simulated together with
// unit times (forward 1, backward 2, or input-gradient 1 + weight-gradient 1), checking that every
// micro-batch runs forward and backward exactly once per stage chunk, that every compute finds its
// inputs received (or made) earlier in its own list, that every send meets its receive, that no
// stage waits forever even when a send blocks until its receive is posted, and that the measured
// makespan, bubble fraction and peak in-flight activations equal the theory.
#include "parallel/pipeline/schedule.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

namespace kiln::parallel::pipeline {
namespace {

bool is_send(Op op) {
  return op == Op::kSendActivation || op == Op::kSendGrad || op == Op::kSendTied;
}
bool is_recv(Op op) {
  return op == Op::kRecvActivation || op == Op::kRecvGrad || op == Op::kRecvTied;
}
bool is_compute(Op op) { return !is_send(op) && !is_recv(op); }
Op recv_of(Op send) {
  return send == Op::kSendActivation ? Op::kRecvActivation
         : send == Op::kSendGrad     ? Op::kRecvGrad
                                     : Op::kRecvTied;
}

// The virtual stage a message from (stage, chunk) of `send` kind goes to.
int target_vs(const ScheduleSpec& s, Op send, int stage, int chunk) {
  const int vs = virtual_stage(s, stage, chunk);
  return send == Op::kSendActivation ? vs + 1 : send == Op::kSendGrad ? vs - 1 : 0;
}

struct SimResult {
  bool deadlock = false;
  double makespan = 0;
  std::vector<double> busy;
  std::vector<int> peak;
};

// Runs all lists together. rendezvous: a send completes only when its receive is at the head of
// the peer's list (MPI's large messages, NCCL); else a send completes at once (buffered) and a
// receive waits for it.
SimResult simulate(const ScheduleSpec& s, const std::vector<std::vector<Action>>& lists,
                   bool rendezvous) {
  const int p = s.stages;
  SimResult r;
  r.busy.assign(p, 0);
  r.peak.assign(p, 0);
  std::vector<size_t> at(p, 0);
  std::vector<double> free(p, 0);
  std::vector<int> in_flight(p, 0);
  // Buffered sends: (from, to, recv op, micro) -> time sent.
  std::map<std::tuple<int, int, Op, int>, double> posted;
  const bool split = splits_backward(s.kind);
  for (bool progress = true; progress;) {
    progress = false;
    for (int st = 0; st < p; ++st) {
      if (at[st] >= lists[st].size()) continue;
      const Action& a = lists[st][at[st]];
      if (is_compute(a.op)) {
        const double dur = a.op == Op::kBackward ? 2 : 1;
        r.busy[st] += dur;
        free[st] += dur;
        if (a.op == Op::kForward) ++in_flight[st];
        if (a.op == Op::kBackwardWeight || (a.op == Op::kBackward && !split)) --in_flight[st];
        r.peak[st] = std::max(r.peak[st], in_flight[st]);
      } else if (is_send(a.op) && !rendezvous) {
        posted[{st, a.peer, recv_of(a.op), a.micro}] = free[st];
      } else if (is_recv(a.op) && !rendezvous) {
        auto it = posted.find({a.peer, st, a.op, a.micro});
        if (it == posted.end()) continue;
        free[st] = std::max(free[st], it->second);
        posted.erase(it);
      } else if (is_send(a.op)) {
        const int to = a.peer;
        if (at[to] >= lists[to].size()) continue;
        const Action& b = lists[to][at[to]];
        if (b.op != recv_of(a.op) || b.micro != a.micro || b.peer != st) continue;
        free[st] = free[to] = std::max(free[st], free[to]);
        ++at[to];
      } else {
        continue;  // a rendezvous receive completes when its sender reaches the send
      }
      ++at[st];
      progress = true;
    }
  }
  for (int st = 0; st < p; ++st) r.deadlock = r.deadlock || at[st] < lists[st].size();
  r.makespan = *std::max_element(free.begin(), free.end());
  return r;
}

// Static checks of the lists: counts, inputs before use, sends matching receives.
void check_lists(const ScheduleSpec& s, const std::vector<std::vector<Action>>& lists) {
  const int p = s.stages, v = s.virtual_stages, m = s.micro_batches, last_vs = p * v - 1;
  const bool split = splits_backward(s.kind);
  std::map<std::tuple<int, int, int>, int> sends;  // (from, to, op * m + micro) -> count
  std::map<std::tuple<int, int, int>, int> recvs;
  for (int st = 0; st < p; ++st) {
    std::map<std::tuple<Op, int, int>, int> seen;  // (op, micro, chunk) -> count so far
    for (const Action& a : lists[st]) {
      const int vs = virtual_stage(s, st, a.chunk);
      auto has = [&](Op op, int chunk) { return seen[std::make_tuple(op, a.micro, chunk)] > 0; };
      SCOPED_TRACE(schedule_name(s.kind) + " stage " + std::to_string(st) + " " + to_string(a));
      ASSERT_TRUE(a.micro >= 0 && a.micro < m && a.chunk >= 0 && a.chunk < v);
      if (a.op == Op::kForward && vs > 0) {
        const int prev = vs - 1;
        EXPECT_TRUE(prev % p == st ? has(Op::kForward, prev / p)
                                   : has(Op::kRecvActivation, a.chunk))
            << "forward before its input arrived";
      }
      if (a.op == Op::kBackward || a.op == Op::kBackwardInput) {
        EXPECT_TRUE(has(Op::kForward, a.chunk)) << "backward before forward";
        if (vs < last_vs) {
          const int nxt = vs + 1;
          EXPECT_TRUE(nxt % p == st ? has(split ? Op::kBackwardInput : Op::kBackward, nxt / p)
                                    : has(Op::kRecvGrad, a.chunk))
              << "backward before its output gradient arrived";
        }
        if (vs == 0 && s.tied_embedding && p > 1 && a.micro == m - 1)
          EXPECT_TRUE(seen[std::make_tuple(Op::kRecvTied, m - 1, 0)] > 0)
              << "last backward before the tied grad";
      }
      if (a.op == Op::kBackwardWeight) EXPECT_TRUE(has(Op::kBackwardInput, a.chunk));
      if (a.op == Op::kSendActivation) EXPECT_TRUE(has(Op::kForward, a.chunk));
      if (a.op == Op::kSendGrad)
        EXPECT_TRUE(has(split ? Op::kBackwardInput : Op::kBackward, a.chunk));
      if (a.op == Op::kSendTied) {
        EXPECT_EQ(vs, last_vs);
        EXPECT_TRUE(has(split ? Op::kBackwardInput : Op::kBackward, a.chunk));
      }
      if (is_send(a.op)) {
        EXPECT_EQ(target_vs(s, a.op, st, a.chunk) % p, a.peer);
        ++sends[{st, a.peer, static_cast<int>(recv_of(a.op)) * m + a.micro}];
      }
      if (is_recv(a.op)) ++recvs[{a.peer, st, static_cast<int>(a.op) * m + a.micro}];
      ++seen[std::make_tuple(a.op, a.micro, a.chunk)];
    }
    // Exactly once per micro-batch and chunk.
    for (int c = 0; c < v; ++c)
      for (int j = 0; j < m; ++j) {
        EXPECT_EQ(seen[std::make_tuple(Op::kForward, j, c)], 1);
        EXPECT_EQ(seen[std::make_tuple(Op::kBackward, j, c)], split ? 0 : 1);
        EXPECT_EQ(seen[std::make_tuple(Op::kBackwardInput, j, c)], split ? 1 : 0);
        EXPECT_EQ(seen[std::make_tuple(Op::kBackwardWeight, j, c)], split ? 1 : 0);
      }
  }
  EXPECT_EQ(sends, recvs) << "every send meets exactly one receive";
  const int per_link = p > 1 ? 2 * m * v * p - 2 * m : 0;  // activations and gradients
  int total = 0;
  for (const auto& [k, n] : sends) total += n;
  EXPECT_EQ(total, per_link + (s.tied_embedding && p > 1 ? 1 : 0));
}

struct Case {
  ScheduleKind kind;
  int p, m, v;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  for (int p : {1, 2, 3, 4, 8})
    for (int m : {1, 2, 3, 4, 5, 8, 12, 16}) {
      out.push_back({ScheduleKind::kGPipe, p, m, 1});
      if (m >= p) out.push_back({ScheduleKind::k1F1B, p, m, 1});
      if (m >= p) out.push_back({ScheduleKind::kZBH1, p, m, 1});
      for (int v : {1, 2, 3})
        if (m % p == 0) out.push_back({ScheduleKind::kInterleaved1F1B, p, m, v});
    }
  return out;
}

TEST(Schedule, EveryMicroBatchOnceInputsBeforeUseNoDeadlockTheory) {
  for (const Case& c : cases())
    for (bool tied : {false, true}) {
      const ScheduleSpec s{c.kind, c.p, c.m, c.v, tied};
      SCOPED_TRACE(schedule_name(c.kind) + " p=" + std::to_string(c.p) + " m=" +
                   std::to_string(c.m) + " v=" + std::to_string(c.v) + (tied ? " tied" : ""));
      ASSERT_TRUE(check_schedule(s).ok()) << check_schedule(s).message();
      const auto lists = schedule(s);
      check_lists(s, lists);
      const SimResult rdv = simulate(s, lists, /*rendezvous=*/true);
      EXPECT_FALSE(rdv.deadlock) << "a blocking send waits forever";
      const SimResult r = simulate(s, lists, /*rendezvous=*/false);
      ASSERT_FALSE(r.deadlock);
      // Unit times: f = 1, b = 2 (bi = w = 1 where split).
      const double theory = theory_makespan(s, 1, 1, 1);
      const double work = 3.0 * c.m * c.v;
      if (c.kind == ScheduleKind::kGPipe || c.m >= c.p) {
        EXPECT_DOUBLE_EQ(r.makespan, theory);
        for (int st = 0; st < c.p; ++st) {
          EXPECT_DOUBLE_EQ(r.busy[st], work);
          EXPECT_EQ(r.peak[st], theory_peak_in_flight(s, st)) << "stage " << st;
        }
      }
    }
}

// The closed forms the issue states, against the simulated bubble fraction (idle / makespan).
TEST(Schedule, BubbleFractions) {
  for (int p : {2, 4, 8})
    for (int m : {8, 16, 32}) {
      auto bubble = [&](ScheduleKind k, int v) {
        const ScheduleSpec s{k, p, m, v, false};
        const SimResult r = simulate(s, schedule(s), false);
        return 1.0 - r.busy[0] / r.makespan;
      };
      const double one_f_one_b = bubble(ScheduleKind::k1F1B, 1);
      // Fractions are quotients of exact integers computed two ways: 1e-12 covers the rounding only
      // (the makespans themselves are compared exactly above).
      EXPECT_NEAR(one_f_one_b, (p - 1.0) / (m + p - 1.0), 1e-12);
      EXPECT_DOUBLE_EQ(bubble(ScheduleKind::kGPipe, 1), one_f_one_b);
      for (int v : {2, 4}) {
        // Bubble time (p - 1)(f + b) / v against v chunks' work: fraction (p-1) / (v m + p - 1).
        const double inter = bubble(ScheduleKind::kInterleaved1F1B, v);
        EXPECT_NEAR(inter, (p - 1.0) / (v * m + p - 1.0), 1e-12);
        // Bubble time relative to the work divides by v.
        EXPECT_NEAR(inter / (1 - inter), one_f_one_b / (1 - one_f_one_b) / v, 1e-12);
      }
      // ZB-H1: bubble time (p - 1)(f + bi - w) = (p - 1), a third of 1F1B's 3 (p - 1).
      const double zb = bubble(ScheduleKind::kZBH1, 1);
      EXPECT_NEAR(zb / (1 - zb), one_f_one_b / (1 - one_f_one_b) / 3, 1e-12);
    }
}

TEST(Schedule, OneF1BStageListsAsWritten) {
  // p = 2, m = 3, stage 0: F0 send, F1 send, recv grad 0, B0, F2 ...
  const ScheduleSpec s{ScheduleKind::k1F1B, 2, 3, 1, false};
  std::vector<std::string> got;
  for (const Action& a : stage_actions(s, 0)) got.push_back(to_string(a));
  const std::vector<std::string> want = {"F(0)",           "send_act(0,@1)",  "F(1)",
                                         "send_act(1,@1)", "recv_grad(0,@1)", "B(0)",
                                         "F(2)",           "send_act(2,@1)",  "recv_grad(1,@1)",
                                         "B(1)",           "recv_grad(2,@1)", "B(2)"};
  EXPECT_EQ(got, want);
}

TEST(Schedule, RefusesNamingTheField) {
  auto msg = [](ScheduleSpec s) { return std::string(check_schedule(s).message()); };
  EXPECT_NE(msg({ScheduleKind::k1F1B, 4, 3, 1}).find("parallel.pipeline_micro_batches"),
            std::string::npos);
  EXPECT_NE(msg({ScheduleKind::kZBH1, 4, 2, 1}).find("at least pp (4)"), std::string::npos);
  EXPECT_NE(msg({ScheduleKind::kInterleaved1F1B, 2, 6 - 1, 2}).find("multiple of pp"),
            std::string::npos);
  EXPECT_NE(msg({ScheduleKind::k1F1B, 2, 4, 2}).find("parallel.virtual_stages"), std::string::npos);
  EXPECT_TRUE(check_schedule({ScheduleKind::kGPipe, 4, 1, 1}).ok());
}

}  // namespace
}  // namespace kiln::parallel::pipeline

// The pipeline executor: one stage's action list per flush, its point-to-point messages over the
// pp group, gradient accumulation and the GradSync brackets, the loss shared over the pp group.
#include "parallel/pipeline/executor.h"

#include <map>

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/elementwise.h"
#include "core/ops/view.h"

namespace kiln::parallel::pipeline {

// The state of one flush, keyed by (micro, chunk).
struct PipelineExecutor::Flush {
  std::vector<MicroBatch> batches;
  std::map<std::pair<int, int>, Tensor> input;     // leaf requiring grad (received activation)
  std::map<std::pair<int, int>, Tensor> output;    // activation, or the scaled loss (last)
  std::map<std::pair<int, int>, Tensor> grad_out;  // received output gradient
  std::map<std::pair<int, int>, Tensor> grad_in;   // input gradient, to send
  std::vector<std::unique_ptr<Work>> sends;        // in flight; waited at the end of the flush
  Tensor loss_sum;                                 // f64, last stage only
  double scale = 1;                                // loss_scale / micro_batches of the step
};

Tensor StageWork::backward_input(int, int, const Tensor& input, const Tensor& output,
                                 const Tensor& grad_output) {
  backward({output}, {grad_output});
  return input.defined() ? input.grad() : Tensor();
}

PipelineExecutor::PipelineExecutor(const ScheduleSpec& spec, Communicator& pp, StageWork& work)
    : spec_(spec), pp_(pp), work_(work), stage_(pp.rank()) {
  KILN_CHECK_EQ(pp.size(), spec.stages);
}

const std::vector<Action>& PipelineExecutor::actions(int m) {
  auto it = actions_.find(m);
  if (it != actions_.end()) return it->second;
  ScheduleSpec s = spec_;
  s.micro_batches = m;
  const absl::Status ok = check_schedule(s);
  KILN_CHECK(ok.ok()) << ok.message();
  return actions_[m] = stage_actions(s, stage_);
}

int PipelineExecutor::last_grad_action(const std::vector<Action>& list) const {
  const bool in_input = work_.weights_in_input_pass();
  int last = -1;
  for (size_t i = 0; i < list.size(); ++i) {
    const Op op = list[i].op;
    if (op == Op::kBackward || (in_input ? op == Op::kBackwardInput : op == Op::kBackwardWeight))
      last = static_cast<int>(i);
  }
  return last;
}

Tensor PipelineExecutor::run(const NextMicroBatch& next, int64_t micro_batches, double loss_scale,
                             GradSync& grad_sync) {
  const int m = spec_.micro_batches > 0 ? spec_.micro_batches : static_cast<int>(micro_batches);
  KILN_CHECK(micro_batches >= 1 && micro_batches % m == 0)
      << micro_batches << " micro-batches in flushes of " << m;
  Tensor loss_sum = Tensor::zeros({}, DType::kF64, pp_.device());
  for (int64_t first = 0; first < micro_batches; first += m) {
    Flush f;
    for (int j = 0; j < m; ++j) f.batches.push_back(next());  // every stage draws: loaders agree
    f.scale = loss_scale / static_cast<double>(micro_batches);
    run_flush(f, first + m == micro_batches, grad_sync);
    if (f.loss_sum.defined()) add_(loss_sum, f.loss_sum);
  }
  // The last stage holds the loss; every stage returns it (the Trainer logs it on rank 0).
  if (spec_.stages > 1) pp_.broadcast(loss_sum, spec_.stages - 1);
  return loss_sum;
}

void PipelineExecutor::run_flush(Flush& f, bool last_flush, GradSync& grad_sync) {
  const std::vector<Action>& list = actions(static_cast<int>(f.batches.size()));
  const int last = last_grad_action(list);
  for (size_t i = 0; i < list.size(); ++i) {
    const Action& a = list[i];
    switch (a.op) {
      case Op::kForward:
      case Op::kBackward:
      case Op::kBackwardInput:
      case Op::kBackwardWeight:
        compute(f, a, last_flush && static_cast<int>(i) == last, grad_sync);
        break;
      default:
        communicate(f, a);
    }
  }
  for (auto& w : f.sends) w->wait();
}

void PipelineExecutor::compute(Flush& f, const Action& a, bool sync_last, GradSync& grad_sync) {
  const std::pair<int, int> k{a.micro, a.chunk};
  const bool last_vs = is_last_virtual(a.chunk);
  if (a.op == Op::kForward) {
    Tensor in;
    if (virtual_of(a.chunk) > 0) {
      auto it = f.input.find(k);
      // The previous virtual stage on this stage (p == 1): its output, detached.
      in = it != f.input.end()
               ? it->second
               : f.output.at({a.micro, a.chunk - 1}).detach().set_requires_grad(true);
      f.input[k] = in;
    }
    Tensor out = work_.forward(a.chunk, f.batches[a.micro], in);
    if (last_vs) {
      {
        NoGradGuard ng;
        Tensor l = cast(out.detach(), DType::kF64);
        f.loss_sum = f.loss_sum.defined() ? add(f.loss_sum, l) : l;
      }
      out = scale(out, f.scale);  // recorded: backward starts from it
    }
    f.output[k] = out;
    return;
  }
  const bool grads_here =
      a.op == Op::kBackward ||
      (work_.weights_in_input_pass() ? a.op == Op::kBackwardInput : a.op == Op::kBackwardWeight);
  if (grads_here) grad_sync.begin_micro_step(sync_last);
  if (a.op == Op::kBackwardWeight) {
    work_.backward_weight(a.chunk, a.micro);
  } else {
    Tensor grad;
    if (!last_vs) {
      auto it = f.grad_out.find(k);
      grad = it != f.grad_out.end() ? it->second : f.grad_in.at({a.micro, a.chunk + 1});
    }
    auto in = f.input.find(k);
    Tensor g = work_.backward_input(a.chunk, a.micro, in != f.input.end() ? in->second : Tensor(),
                                    f.output.at(k), grad);
    if (g.defined()) f.grad_in[k] = g;
    f.output.erase(k);  // the activations of this micro-batch are no longer needed
    f.grad_out.erase(k);
    if (in != f.input.end()) f.input.erase(in);
  }
  if (grads_here) grad_sync.end_micro_step();
}

void PipelineExecutor::communicate(Flush& f, const Action& a) {
  const std::pair<int, int> k{a.micro, a.chunk};
  switch (a.op) {
    case Op::kSendActivation:
      f.sends.push_back(pp_.send_async(f.output.at(k).detach().contiguous(), a.peer));
      break;
    case Op::kRecvActivation: {
      Tensor buf = work_.activation_buffer(f.batches[a.micro]);
      pp_.recv(buf, a.peer);
      f.input[k] = buf.set_requires_grad(true);
      break;
    }
    case Op::kSendGrad:
      f.sends.push_back(pp_.send_async(f.grad_in.at(k).contiguous(), a.peer));
      f.grad_in.erase(k);
      break;
    case Op::kRecvGrad: {
      Tensor buf = work_.activation_buffer(f.batches[a.micro]);
      pp_.recv(buf, a.peer);
      f.grad_out[k] = buf;
      break;
    }
    case Op::kSendTied: {
      Tensor g = work_.take_tied_grad();
      KILN_CHECK(g.defined()) << "the tied classifier has no gradient to send";
      f.sends.push_back(pp_.send_async(g.contiguous(), a.peer));
      break;
    }
    case Op::kRecvTied: {
      Tensor buf = work_.tied_buffer();
      pp_.recv(buf, a.peer);
      work_.add_tied_grad(buf);
      break;
    }
    default:
      KILN_CHECK(false) << "not a message: " << to_string(a);
  }
}

double PipelineExecutor::forward_loss(const MicroBatch& batch) {
  NoGradGuard ng;
  const int p = spec_.stages, last = p * spec_.virtual_stages - 1;
  Tensor x, loss = Tensor::zeros({}, DType::kF64, pp_.device());
  for (int vs = 0; vs <= last; ++vs) {
    const int owner = vs % p;
    if (owner != stage_) continue;
    if (vs > 0 && (vs - 1) % p != stage_) {
      x = work_.activation_buffer(batch);
      pp_.recv(x, (vs - 1) % p);
    }
    x = work_.forward(vs / p, batch, vs > 0 ? x : Tensor());
    if (vs == last)
      loss = cast(x, DType::kF64);
    else if ((vs + 1) % p != stage_)
      pp_.send(x.contiguous(), (vs + 1) % p);
  }
  if (p > 1) pp_.broadcast(loss, p - 1);
  return loss.item();
}

}  // namespace kiln::parallel::pipeline

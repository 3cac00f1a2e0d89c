// Helpers the models tests share (test-only, header-only): the tiny GPT-2 / Llama spec most of them
// build (and a larger tiny Llama for the GPU tests), the node counts of a loss's graph, and the
// relative difference of two tensors.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "models/transformer.h"

namespace kiln::models::test_util {

// 2 blocks, 4 heads (2 kv heads for Llama), C 16, vocabulary 29, T 8; GPT-2 tied with biases,
// Llama untied without. init_std 0.2: large enough that every path carries a visible gradient.
inline ModelSpec tiny_spec(Family f) {
  ModelSpec s;
  s.family = f;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = f == Family::kLlama ? 2 : 4;
  s.d_model = 16;
  s.d_ff = f == Family::kLlama ? 24 : 64;
  s.vocab_size = 29;
  s.max_seq_len = 8;
  s.tied_embeddings = f == Family::kGPT2;
  s.bias = f == Family::kGPT2;
  s.init_std = 0.2;
  return s;
}

// A Llama large enough for the CUDA kernels' vector paths: 2 blocks, 4 heads (2 kv), C 64, FFN
// d_ff (its alignment picks the fused projections' paths), vocabulary 128, T 32, untied, no bias.
inline ModelSpec tiny_gpu_llama(int64_t d_ff) {
  ModelSpec s;
  s.family = Family::kLlama;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = 2;
  s.d_model = 64;
  s.d_ff = d_ff;
  s.vocab_size = 128;
  s.max_seq_len = 32;
  s.tied_embeddings = false;
  s.bias = false;
  return s;
}

// Calls visit(node) once for each node of the graph of root, root first.
template <typename Visit>
void for_each_node(const Tensor& root, Visit visit) {
  std::set<const Node*> seen;
  std::vector<std::shared_ptr<Node>> todo = {root.grad_fn()};
  while (!todo.empty()) {
    std::shared_ptr<Node> n = todo.back();
    todo.pop_back();
    if (!n || !seen.insert(n.get()).second) continue;
    visit(*n);
    for (const Edge& e : n->next) todo.push_back(e.fn);
  }
}

// How many nodes of each name the graph of root holds.
inline std::map<std::string, int> node_counts(const Tensor& root) {
  std::map<std::string, int> counts;
  for_each_node(root, [&](const Node& n) { ++counts[n.name()]; });
  return counts;
}

// max |a - b| / max |b| (max |a - b| when b is all zeros); infinite when a holds a non-finite
// value.
inline double rel_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> va = a.to_vector(), vb = b.to_vector();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    if (!std::isfinite(va[i])) return INFINITY;
    diff = std::max(diff, std::fabs(va[i] - vb[i]));
    scale = std::max(scale, std::fabs(vb[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

}  // namespace kiln::models::test_util

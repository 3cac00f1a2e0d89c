// Tests for Tensor basics, dtype conversions, the caching allocator and nn::Module names.
#include "core/tensor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/allocator.h"
#include "core/check.h"
#include "core/nn/layers.h"

namespace kiln {
namespace {

TEST(Dtype, SixteenAndEightBitFloatsRoundToNearestEven) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);  // tie -> even
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3.0f / 256)), 1.0f + 1.0f / 64);
  EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 1.0f / 2048)), 1.0f);  // tie -> even
  EXPECT_EQ(f16_to_f32(f32_to_f16(65504.0f)), 65504.0f);        // f16 max
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(70000.0f))));
  EXPECT_EQ(f16_to_f32(f32_to_f16(std::ldexp(1.0f, -24))), std::ldexp(1.0f, -24));  // subnormal
  EXPECT_EQ(fp8_to_f32(f32_to_fp8(448.0f, DType::kF8E4M3), DType::kF8E4M3), 448.0f);
  EXPECT_EQ(fp8_to_f32(f32_to_fp8(1e6f, DType::kF8E4M3), DType::kF8E4M3), 448.0f);  // saturates
  EXPECT_EQ(fp8_to_f32(f32_to_fp8(57344.0f, DType::kF8E5M2), DType::kF8E5M2), 57344.0f);
  EXPECT_EQ(fp8_to_f32(f32_to_fp8(-0.3125f, DType::kF8E4M3), DType::kF8E4M3), -0.3125f);
  // Every e4m3 value survives a round trip.
  for (int b = 0; b < 256; ++b) {
    const float v = fp8_to_f32(static_cast<uint8_t>(b), DType::kF8E4M3);
    if (std::isnan(v)) continue;
    EXPECT_EQ(fp8_to_f32(f32_to_fp8(v, DType::kF8E4M3), DType::kF8E4M3), v) << b;
  }
}

TEST(Tensor, FactoriesConversionsAndStrings) {
  Tensor t = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, DType::kF16);
  EXPECT_EQ(t.str(), "f16[2, 3] cpu");
  EXPECT_EQ(t.to(DType::kI64).to_ints(), (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(Tensor::full({2}, 2.5, DType::kBF16).to_vector(), (std::vector<double>{2.5, 2.5}));
  EXPECT_EQ(Tensor::scalar(3.0).item(), 3.0);
  EXPECT_EQ(Tensor::zeros({0, 3}).numel(), 0);
  EXPECT_THAT(
      [] {
        Tensor::from_vector({1, 2}, {3});
      },
      ::testing::ThrowsMessage<Error>(::testing::HasSubstr("2 values for shape [3]")));
  EXPECT_THAT([] { Tensor().shape(); },
              ::testing::ThrowsMessage<Error>(::testing::HasSubstr("undefined tensor")));
  EXPECT_THAT([] { Tensor::zeros({2}).item(); },
              ::testing::ThrowsMessage<Error>(::testing::HasSubstr("item() on a tensor with 2")));
  EXPECT_THAT([] { Tensor::zeros({2}, DType::kI32).set_requires_grad(true); },
              ::testing::ThrowsMessage<Error>(::testing::HasSubstr("only floating tensors")));
}

TEST(Allocator, CpuCachingReusesBlocksAndCountsBytes) {
  Allocator* a = allocator_for(Device::cpu());
  a->empty_cache();
  const MemoryStats before = a->stats();
  void* p = nullptr;
  {
    Tensor t = Tensor::empty({1000}, DType::kF32);
    p = t.raw();
    EXPECT_GE(a->stats().allocated - before.allocated, 4000);
  }
  EXPECT_EQ(a->stats().allocated, before.allocated);
  const int64_t reserved = a->stats().reserved;
  Tensor u = Tensor::empty({1000}, DType::kF32);
  EXPECT_EQ(u.raw(), p);                     // the cached block comes back
  EXPECT_EQ(a->stats().reserved, reserved);  // no new memory from the system
  EXPECT_GE(a->stats().peak, a->stats().allocated);
}

TEST(Module, HierarchicalNamesAndDecayFlags) {
  struct Net : nn::Module {
    explicit Net(Generator& g) {
      fc = register_module("fc", std::make_shared<nn::Linear>(4, 3, true, 0.02, g));
      ln = register_module("ln", std::make_shared<nn::LayerNorm>(3, 1e-5));
    }
    std::shared_ptr<nn::Linear> fc;
    std::shared_ptr<nn::LayerNorm> ln;
  };
  Generator g(1);
  Net net(g);
  auto params = net.parameters();
  ASSERT_EQ(params.size(), 4u);
  EXPECT_EQ(params[0].name, "fc.weight");
  EXPECT_TRUE(params[0].decay);
  EXPECT_EQ(params[1].name, "fc.bias");
  EXPECT_FALSE(params[1].decay);
  EXPECT_EQ(params[3].name, "ln.bias");
  EXPECT_EQ(net.num_parameters(), 4 * 3 + 3 + 3 + 3);
  for (auto& p : params) EXPECT_TRUE(p.tensor.requires_grad());
}

}  // namespace
}  // namespace kiln

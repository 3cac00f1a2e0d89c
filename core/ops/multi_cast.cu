// One launch (a few for many tensors) that converts a list of contiguous fp32 tensors to bf16 or
// f16: the per-step cast of every parameter to the compute dtype (nn::PrecastScope), which was a
// separate convert kernel (and launch) per parameter. Chunks of 64Ki elements, one block each, the
// tensor pointers and the chunk table passed as kernel arguments; rounds as the convert kernel.
#include "core/check.h"
#include "core/cuda/dtype.cuh"
#include "core/cuda/runtime.h"
#include "core/ops/cuda_base_ops.h"

namespace kiln::cuda {
namespace {

constexpr int kMaxTensors = 48;    // tensors per launch
constexpr int kMaxBlocks = 512;    // chunks (blocks) per launch
constexpr int64_t kChunk = 65536;  // elements per chunk
constexpr int kThreads = 256;

struct CastArgs {
  const float* src[kMaxTensors];
  uint16_t* dst[kMaxTensors];
  int64_t n[kMaxTensors];
  uint8_t tensor[kMaxBlocks];
  int32_t chunk[kMaxBlocks];
};

template <bool kBf16>
__device__ __forceinline__ uint16_t to16(float f) {
  if constexpr (kBf16) return f32_to_bf16_bits(f);
  return f32_to_f16_bits(f);
}

// Four elements per access where both pointers allow it (src 16-byte, dst 8-byte aligned).
template <bool kBf16>
__global__ void __launch_bounds__(kThreads) multi_cast_kernel(CastArgs a) {
  const int t = a.tensor[blockIdx.x];
  const int64_t start = static_cast<int64_t>(a.chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(a.n[t], start + kChunk);
  const float* __restrict__ s = a.src[t];
  uint16_t* __restrict__ d = a.dst[t];
  const bool vec =
      (reinterpret_cast<uintptr_t>(s) % 16 == 0) && (reinterpret_cast<uintptr_t>(d) % 8 == 0);
  int64_t i = start;
  if (vec) {
    const int64_t end4 = start + (end - start) / 4 * 4;  // start is a multiple of 4
    for (int64_t q = start + 4 * threadIdx.x; q < end4; q += 4 * kThreads) {
      const float4 v = *reinterpret_cast<const float4*>(s + q);
      ushort4 o;
      o.x = to16<kBf16>(v.x);
      o.y = to16<kBf16>(v.y);
      o.z = to16<kBf16>(v.z);
      o.w = to16<kBf16>(v.w);
      *reinterpret_cast<ushort4*>(d + q) = o;
    }
    i = end4;
  }
  for (int64_t k = i + threadIdx.x; k < end; k += kThreads) d[k] = to16<kBf16>(s[k]);
}

}  // namespace

void multi_cast(const std::vector<Tensor>& src, const std::vector<Tensor>& dst) {
  KILN_CHECK_EQ(src.size(), dst.size());
  if (src.empty()) return;
  const DType out = dst[0].dtype();
  KILN_CHECK(out == DType::kBF16 || out == DType::kF16) << "multi_cast: to " << out;
  DeviceGuard guard(device_of(dst[0]));
  for (size_t i = 0; i < src.size(); ++i) {
    KILN_CHECK(src[i].dtype() == DType::kF32 && dst[i].dtype() == out && src[i].is_contiguous() &&
               dst[i].is_contiguous() && src[i].numel() == dst[i].numel() &&
               src[i].device() == dst[0].device() && dst[i].device() == dst[0].device())
        << "multi_cast: " << src[i].str() << " -> " << dst[i].str();
  }
  CastArgs args{};
  int nt = 0, nb = 0;
  auto launch = [&]() {
    if (out == DType::kBF16) {
      multi_cast_kernel<true><<<nb, kThreads, 0, compute_stream()>>>(args);
    } else {
      multi_cast_kernel<false><<<nb, kThreads, 0, compute_stream()>>>(args);
    }
    KILN_CUDA_CHECK_LAUNCH();
    nb = 0;
  };
  for (size_t i = 0; i < src.size(); ++i) {
    const int64_t n = src[i].numel();
    if (n == 0) continue;
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      if (c == 0 || nt == 0) {  // (re)enter tensor i into a slot of this launch
        if (nt == kMaxTensors) {
          launch();
          nt = 0;
        }
        args.src[nt] = src[i].data<float>();
        args.dst[nt] = static_cast<uint16_t*>(dst[i].raw());
        args.n[nt] = n;
        ++nt;
      }
      args.tensor[nb] = static_cast<uint8_t>(nt - 1);
      args.chunk[nb] = static_cast<int32_t>(c);
      if (++nb == kMaxBlocks) {
        launch();
        nt = 0;
      }
    }
  }
  if (nb > 0) launch();
}

}  // namespace kiln::cuda

// Tests of the CUDA runtime (label gpu; they skip without a GPU): streams and flags, the caching
// allocator (poisoning, stats, no cudaMalloc in the steady state, empty_cache, the out-of-memory
// message, record_stream), copies between host and device across every dtype pair and stride
// pattern (bit-identical to the CPU conversions), fill, and the pinned upload path.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "core/autograd.h"
#include "core/check.h"
#include "core/cuda/pinned.h"
#include "core/ops/matmul.h"
#include "core/random.h"
#include "core/testing/gpu_test_util.h"

namespace kiln {
namespace {

using testing::GpuTest;
using ::testing::HasSubstr;
using testing::same_bits;

using CudaRuntime = GpuTest;

const Device kGpu = Device::cuda(0);

const DType kAllDtypes[] = {DType::kF32,    DType::kF64, DType::kBF16, DType::kF16, DType::kF8E4M3,
                            DType::kF8E5M2, DType::kI32, DType::kI64,  DType::kU16};

// Values in [0, 100) with fractions (non-negative so every float -> integer conversion is
// defined), first rounded into `dtype` on the host.
Tensor source(const Shape& shape, DType dtype, uint64_t seed) {
  Generator g(seed);
  Tensor f = rand_uniform(shape, g, 0.0, 100.0, DType::kF64);
  Tensor t = Tensor::empty(shape, dtype);
  raw::copy(t, f);
  return t;
}

// The CPU reference copy of src (any device) into a fresh contiguous host tensor of dtype.
Tensor cpu_convert(const Tensor& src_host, DType dtype) {
  Tensor t = Tensor::empty(src_host.shape(), dtype);
  raw::copy(t, src_host);
  return t;
}

TEST_F(CudaRuntime, StreamsHandlesAndFlags) {
  EXPECT_GE(cuda::device_count(), 1);
  EXPECT_TRUE(cuda_available());
  unsigned int flags = 0;
  ASSERT_EQ(cudaStreamGetFlags(cuda::compute_stream(), &flags), cudaSuccess);
  EXPECT_EQ(flags & cudaStreamNonBlocking, cudaStreamNonBlocking);
  ASSERT_EQ(cudaStreamGetFlags(cuda::comm_stream(), &flags), cudaSuccess);
  EXPECT_EQ(flags & cudaStreamNonBlocking, cudaStreamNonBlocking);
  EXPECT_NE(cuda::compute_stream(), cuda::comm_stream());
  EXPECT_NE(cuda::lt_handle(), nullptr);
  EXPECT_NE(cuda::lt_workspace(), nullptr);
  EXPECT_EQ(cuda::lt_workspace_size(), size_t{32} << 20);
  cuda::set_deterministic(true);
  EXPECT_TRUE(cuda::deterministic());
  cuda::set_deterministic(false);
  EXPECT_FALSE(cuda::deterministic());
  cuda::set_device(0);
  EXPECT_EQ(cuda::current_device(), 0);
  EXPECT_THROW(cuda::set_device(cuda::device_count()), Error);
  {
    cuda::DeviceGuard g(0);
    EXPECT_EQ(cuda::current_device(), 0);
  }
  EXPECT_GE(cuda::compute_capability(), 80);
  cuda::synchronize();
  cuda_backend().synchronize();
}

TEST_F(CudaRuntime, PoisonedAllocationsReadAsNan) {
  Tensor f = Tensor::empty({1000}, DType::kF32, kGpu);
  for (double v : f.to_vector()) ASSERT_TRUE(std::isnan(v));
  Tensor b = Tensor::empty({3, 5}, DType::kBF16, kGpu);
  for (double v : b.to_vector()) ASSERT_TRUE(std::isnan(v));
  Tensor i = Tensor::empty({7}, DType::kI32, kGpu);
  for (int64_t v : i.to_ints()) ASSERT_EQ(v, -1);
}

TEST_F(CudaRuntime, AllocatorStatsTrackTensors) {
  const MemoryStats s0 = memory_stats(kGpu);
  MemoryStats s1;
  {
    Tensor t = Tensor::empty({1 << 20}, DType::kF32, kGpu);  // 4 MiB
    s1 = memory_stats(kGpu);
    EXPECT_GE(s1.allocated - s0.allocated, 4 << 20);
    EXPECT_GE(s1.reserved, s1.allocated);
    EXPECT_GE(s1.peak, s1.allocated);
  }
  const MemoryStats s2 = memory_stats(kGpu);
  EXPECT_EQ(s2.allocated, s0.allocated);
  EXPECT_EQ(s2.reserved, s1.reserved);  // the block stays cached
  EXPECT_GE(s2.peak, s1.allocated);
  allocator_for(kGpu)->reset_peak();
  EXPECT_EQ(memory_stats(kGpu).peak, s2.allocated);
  cuda::empty_cache();
  EXPECT_LT(memory_stats(kGpu).reserved, s2.reserved);
  EXPECT_EQ(memory_stats(kGpu).allocated, s2.allocated);
}

TEST_F(CudaRuntime, SteadyStateDoesNoCudaMalloc) {
  auto round = [] {
    std::vector<Tensor> live;
    for (int64_t n : {1, 100, 4096, 100000, 1 << 22, 3 << 20, 17}) {
      live.push_back(Tensor::empty({n}, DType::kF32, kGpu));
      live.push_back(Tensor::empty({n}, DType::kBF16, kGpu));
    }
    Tensor a = testing::random_tensor({256, 64}, 1, DType::kF32, kGpu);
    Tensor c = a.clone().to(DType::kBF16).to(Device::cpu());
    (void)c;
  };
  round();
  cuda::synchronize();
  const cuda::AllocatorCounters before = cuda::allocator_counters();
  for (int i = 0; i < 3; ++i) round();
  cuda::synchronize();
  const cuda::AllocatorCounters after = cuda::allocator_counters();
  EXPECT_EQ(after.device_mallocs, before.device_mallocs);
  EXPECT_GT(after.cache_hits, before.cache_hits);
}

TEST_F(CudaRuntime, OutOfMemoryIsAClearError) {
  size_t free_b = 0, total_b = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_b, &total_b), cudaSuccess);
  const int64_t n = static_cast<int64_t>(total_b) * 4;  // f32: 16x the device memory
  EXPECT_THAT([&] { Tensor::empty({n}, DType::kF32, kGpu); },
              ::testing::ThrowsMessage<Error>(::testing::AllOf(
                  HasSubstr("CUDA out of memory on cuda:0"), HasSubstr("tried to allocate"),
                  HasSubstr("free of"), HasSubstr("reserved"))));
  // The allocator and the device keep working afterwards.
  Tensor t = Tensor::full({16}, 2.0, DType::kF32, kGpu);
  EXPECT_EQ(t.to_vector()[15], 2.0);
}

TEST_F(CudaRuntime, RecordStreamDelaysReuseUntilTheStreamPasses) {
  cuda::empty_cache();  // no other cached block of this size can be handed out below
  std::atomic<bool> release{false};
  const void* first = nullptr;
  {
    Tensor t = Tensor::empty({1 << 16}, DType::kF32, kGpu);
    first = t.raw();
    // Block the communication stream on the host until `release`.
    ASSERT_EQ(cudaLaunchHostFunc(
                  cuda::comm_stream(),
                  [](void* flag) {
                    auto* f = static_cast<std::atomic<bool>*>(flag);
                    while (!f->load()) std::this_thread::sleep_for(std::chrono::microseconds(50));
                  },
                  &release),
              cudaSuccess);
    cuda::record_stream(t, cuda::comm_stream());
  }  // freed while the comm stream has not passed this point
  // Should anything below wait on the blocked stream, release it after 10 s rather than hang.
  std::thread watchdog([&] {
    for (int i = 0; i < 10000 && !release.load(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    release.store(true);
  });
  Tensor u = Tensor::empty({1 << 16}, DType::kF32, kGpu);
  EXPECT_NE(u.raw(), first) << "a block still in use on another stream was handed out";
  release.store(true);
  watchdog.join();
  ASSERT_EQ(cudaStreamSynchronize(cuda::comm_stream()), cudaSuccess);
  Tensor v = Tensor::empty({1 << 16}, DType::kF32, kGpu);
  EXPECT_EQ(v.raw(), first) << "the block should be reusable once the stream has passed";
}

TEST_F(CudaRuntime, CopiesEveryDtypePairBitIdenticalToCpu) {
  const Shape shape = {5, 7, 3};
  for (DType sd : kAllDtypes) {
    for (DType dd : kAllDtypes) {
      SCOPED_TRACE(std::string(dtype_name(sd)) + " -> " + dtype_name(dd));
      Tensor src = source(shape, sd, 100 + static_cast<int>(sd) * 16 + static_cast<int>(dd));
      Tensor ref = cpu_convert(src, dd);
      // host -> device, contiguous
      Tensor d = Tensor::empty(shape, dd, kGpu);
      d.copy_(src);
      EXPECT_TRUE(same_bits(d, ref));
      // device -> device
      Tensor sdev = Tensor::empty(shape, sd, kGpu);
      sdev.copy_(src);
      EXPECT_TRUE(same_bits(sdev, src));
      Tensor d2 = Tensor::empty(shape, dd, kGpu);
      d2.copy_(sdev);
      EXPECT_TRUE(same_bits(d2, ref));
      // device -> host
      Tensor h = Tensor::empty(shape, dd);
      h.copy_(sdev);
      EXPECT_TRUE(same_bits(h, ref));
      // strided source (a transpose) into a strided destination (a narrowed slab), on device
      Tensor st = sdev.transpose(0, 2);  // (3, 7, 5)
      Tensor big = Tensor::empty({3, 7, 9}, dd, kGpu);
      Tensor view = big.narrow(2, 2, 5);
      view.copy_(st);
      EXPECT_TRUE(same_bits(view, cpu_convert(src.transpose(0, 2).contiguous(), dd)));
      // strided device source -> strided host destination
      Tensor hbig = Tensor::empty({3, 7, 9}, dd);
      Tensor hview = hbig.narrow(2, 1, 5);
      hview.copy_(st);
      EXPECT_TRUE(same_bits(hview, cpu_convert(src.transpose(0, 2).contiguous(), dd)));
      // strided host source -> device
      Tensor d3 = Tensor::empty({3, 7, 5}, dd, kGpu);
      d3.copy_(src.transpose(0, 2));
      EXPECT_TRUE(same_bits(d3, cpu_convert(src.transpose(0, 2).contiguous(), dd)));
    }
  }
}

// Same-dtype device copies of column blocks: where the block's width and offset are multiples of
// 16 bytes (and the rows are) the copy moves 16-byte elements (copy.cu, widen_to_16_bytes);
// offsets or widths off the 16-byte grid and a strided innermost dim take the element copy. Every
// element size, both directions (gather out of and scatter into a wide buffer), against the CPU
// copy of the same views.
TEST_F(CudaRuntime, ColumnBlockCopiesMatchTheCpuOnAndOffThe16ByteGrid) {
  struct Case {
    int64_t width, offset, cols;  // the block [offset, offset + cols) of rows `width` wide
  };
  const Case cases[] = {{64, 16, 32}, {64, 0, 64}, {72, 8, 48}, {64, 3, 32},
                        {64, 16, 30}, {40, 8, 24}, {9, 1, 5}};
  for (DType dt : {DType::kBF16, DType::kF32, DType::kF64, DType::kF8E4M3, DType::kI64}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " width " + std::to_string(c.width) + " block [" +
                   std::to_string(c.offset) + ", +" + std::to_string(c.cols) + ")");
      const Shape shape = {3, 37, c.width};
      Tensor host = source(shape, dt, 900 + c.width + c.offset);
      Tensor dev = Tensor::empty(shape, dt, kGpu);
      dev.copy_(host);
      const Tensor want = host.narrow(2, c.offset, c.cols).contiguous();
      // gather: a column block of a wide device buffer into a contiguous device tensor
      Tensor out = Tensor::empty({3, 37, c.cols}, dt, kGpu);
      out.copy_(dev.narrow(2, c.offset, c.cols));
      EXPECT_TRUE(same_bits(out, want));
      // scatter: back into a column block of another wide buffer; the other columns untouched
      Tensor dev2 = Tensor::empty(shape, dt, kGpu);
      dev2.copy_(host);
      Tensor zeros = Tensor::zeros({3, 37, c.cols}, dt, kGpu);
      dev2.narrow(2, c.offset, c.cols).copy_(zeros);
      Tensor want2 = host.clone();
      want2.narrow(2, c.offset, c.cols).copy_(Tensor::zeros({3, 37, c.cols}, dt));
      EXPECT_TRUE(same_bits(dev2, want2));
      // a transposed source (innermost stride not 1)
      Tensor t = Tensor::empty({1, c.width, 37}, dt, kGpu);
      t.copy_(dev.narrow(0, 1, 1).transpose(1, 2));
      EXPECT_TRUE(same_bits(t, host.narrow(0, 1, 1).transpose(1, 2).contiguous()));
    }
  }
}

TEST_F(CudaRuntime, ConversionsRoundLikeTheCpuOnSignedAndSpecialValues) {
  // Signed values, ties, subnormals and out-of-range magnitudes through every float format.
  std::vector<double> v = {0.0,   -0.0,  1.0,      -1.5,     3.14159,
                           1e-3,  -2e-5, 65504.0,  65520.0,  1e5,
                           448.0, 464.0, 500.0,    -57344.0, 70000.0,
                           1e-8,  6e-8,  1.0 / 3,  -7.0 / 3, std::ldexp(1.0, -133),
                           1e38,  -1e39, INFINITY, -INFINITY};
  const DType floats[] = {DType::kF32, DType::kF64,    DType::kBF16,
                          DType::kF16, DType::kF8E4M3, DType::kF8E5M2};
  Tensor src = Tensor::from_vector(v, {static_cast<int64_t>(v.size())}, DType::kF64);
  Tensor sdev = src.to(kGpu);
  for (DType dd : floats) {
    SCOPED_TRACE(dtype_name(dd));
    Tensor ref = cpu_convert(src, dd);
    Tensor d = Tensor::empty(src.shape(), dd, kGpu);
    d.copy_(sdev);  // f64 -> dd on the device
    EXPECT_TRUE(same_bits(d, ref));
    for (DType back : floats) {  // and on to every other float format
      Tensor r2 = cpu_convert(ref, back);
      Tensor d2 = Tensor::empty(src.shape(), back, kGpu);
      d2.copy_(d);
      EXPECT_TRUE(same_bits(d2, r2)) << dtype_name(dd) << " -> " << dtype_name(back);
    }
  }
}

TEST_F(CudaRuntime, FillMatchesCpuForEveryDtype) {
  for (DType t : kAllDtypes) {
    for (double v : {0.0, 3.5, 1.0 / 3}) {
      SCOPED_TRACE(std::string(dtype_name(t)) + " " + std::to_string(v));
      Tensor ref = Tensor::full({4, 6}, v, t);
      Tensor d = Tensor::full({4, 6}, v, t, kGpu);
      EXPECT_TRUE(same_bits(d, ref));
      // strided fill leaves the rest alone
      Tensor base = source({4, 6}, t, 7);
      Tensor dbase = base.to(kGpu).detach();
      dbase.narrow(1, 1, 3).fill_(v);
      base.narrow(1, 1, 3).fill_(v);
      EXPECT_TRUE(same_bits(dbase, base));
    }
  }
}

TEST_F(CudaRuntime, LargeUploadsGoThroughPinnedStaging) {
  // 80 MB: ten 8 MiB pinned chunks, alternating buffers; read back exactly.
  Tensor src = testing::random_tensor({20'000'003}, 5);
  Tensor d = src.to(kGpu);
  EXPECT_TRUE(same_bits(d, src));
  // The same host memory overwritten right after the copy returns must not leak into the GPU.
  Tensor host = src.clone();
  Tensor d2 = Tensor::empty(host.shape(), DType::kF32, kGpu);
  d2.copy_(host);
  host.fill_(0.0);
  EXPECT_TRUE(same_bits(d2, src));
  // PinnedBuffer directly.
  cuda::PinnedBuffer buf(1 << 20);
  ASSERT_GE(buf.capacity(), size_t{1} << 20);
  std::memcpy(buf.data(), src.raw(), 1 << 20);
  Tensor d3 = Tensor::empty({(1 << 20) / 4}, DType::kF32, kGpu);
  buf.copy_to_device(d3.raw(), 1 << 20);
  buf.wait();
  EXPECT_TRUE(same_bits(d3, src.narrow(0, 0, (1 << 20) / 4)));
}

TEST_F(CudaRuntime, PinnedRingUploadsWithoutWaitingForTheGpu) {
  // Keep the compute stream busy for tens of milliseconds (bf16 8192^3 GEMMs, ~1.4 ms each on an
  // H200), then upload batch-sized buffers (128 KiB, a 32 x 1024 i32 batch) through a 4-slot
  // ring: the first four must return at once (the host does not wait for the queue), the fifth
  // reuses slot 0 whose copy is still queued behind the GEMMs, so it must wait, and every
  // buffer must arrive intact.
  // The slots' pinned memory is allocated (cudaHostAlloc, slow and variable when other processes
  // share the GPU, as under ctest -j) by a first round of uploads before the timed part, as a
  // training run allocates them on its first batches.
  NoGradGuard ng;
  cuda::PinnedRing ring(4);
  const int64_t n = 32 * 1024;
  std::vector<Tensor> host, dev;
  for (int i = 0; i < 6; ++i) {
    host.push_back(Tensor::from_ints(std::vector<int64_t>(n, i + 1), {n}, DType::kI32));
    dev.push_back(Tensor::empty({n}, DType::kI32, kGpu));
  }
  for (int i = 0; i < 4; ++i) ring.upload(dev[i].raw(), host[i].raw(), n * 4);
  cuda::synchronize();
  const int64_t warm_waits = ring.waits();
  Generator g(3);
  Tensor a = randn({8192, 8192}, g, DType::kBF16).to(kGpu);
  Tensor sink;
  for (int i = 0; i < 40; ++i) sink = matmul(a, a);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 4; ++i) ring.upload(dev[i].raw(), host[i].raw(), n * 4);
  const double first4_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(ring.waits(), warm_waits);
  EXPECT_LT(first4_ms, 10.0) << "the uploads waited for the GPU";
  for (int i = 4; i < 6; ++i) ring.upload(dev[i].raw(), host[i].raw(), n * 4);
  EXPECT_GE(ring.waits(), warm_waits + 1) << "slot 0 was refilled while its copy was still queued";
  std::printf(
      "[pinned ring] 4 uploads behind ~56 ms of GEMMs took %.3f ms on the host; waits %lld\n",
      first4_ms, static_cast<long long>(ring.waits()));
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(dev[i].to_ints(), std::vector<int64_t>(n, i + 1)) << "upload " << i;
  EXPECT_EQ(ring.uploads(), 10);  // 4 to allocate the slots, then 6
}

TEST_F(CudaRuntime, EmptyAndScalarTensors) {
  Tensor e = Tensor::empty({0, 5}, DType::kF32, kGpu);
  Tensor he = Tensor::empty({0, 5}, DType::kF32);
  e.copy_(he);
  he.copy_(e);
  e.fill_(1.0);
  Tensor s = Tensor::scalar(2.5, DType::kBF16, kGpu);
  EXPECT_EQ(s.item(), 2.5);
  EXPECT_EQ(Tensor::from_ints({1, -2, 3}, {3}, DType::kI64, kGpu).to_ints(),
            (std::vector<int64_t>{1, -2, 3}));
}

}  // namespace
}  // namespace kiln

// CUDA kernels of embedding (core/ops/embedding.cc).
//   forward   one block per position (grid-stride), copying the weight row in the widest unit
//             (16, 8, 4 or 2 bytes) that the row size and both pointers allow. An id outside
//             [0, V) writes a zero row and records min(position) in a device flag; the launcher
//             reads the flag back (one sync) and throws the same kiln::Error as the CPU op.
//   backward  deterministic, no float atomics: the (id, position) pairs are sorted by id with a
//             stable CUB radix sort, so each id's positions stay in increasing order; then one
//             block per sorted position that starts a run of equal ids sums the gradient rows of
//             the run in position order (the CPU order, in f32) into that row of dW, and rows no
//             id touches are zero. Bit-identical across runs (and to the CPU for f32).
#include <climits>
#include <cub/device/device_radix_sort.cuh>

#include "core/backend.h"
#include "core/ops/cuda_util.cuh"

namespace kiln::cuda {
namespace {

constexpr const char* kOp = "embedding";
constexpr unsigned long long kNoBadId = ULLONG_MAX;

template <typename I>
__device__ __forceinline__ int64_t load_id(const I* ids, int64_t p) {
  return static_cast<int64_t>(ids[p]);
}

// out[p, :] = weight[ids[p], :], moved in units U. row_units = C * sizeof(T) / sizeof(U).
template <typename U, typename I>
__global__ void gather_kernel(const U* __restrict__ w, const I* __restrict__ ids,
                              U* __restrict__ out, int64_t n, int64_t v, int64_t row_units,
                              unsigned long long* __restrict__ bad) {
  for (int64_t p = blockIdx.x; p < n; p += gridDim.x) {
    const int64_t id = load_id(ids, p);
    U* dst = out + p * row_units;
    if (id < 0 || id >= v) {
      if (threadIdx.x == 0) atomicMin(bad, static_cast<unsigned long long>(p));
      for (int64_t j = threadIdx.x; j < row_units; j += blockDim.x) dst[j] = U{};
      continue;
    }
    const U* src = w + id * row_units;
    for (int64_t j = threadIdx.x; j < row_units; j += blockDim.x) dst[j] = src[j];
  }
}

// keys[p] = ids[p] as i32 (0 for an id outside [0, V), which the forward has refused already),
// vals[p] = p.
template <typename I>
__global__ void keys_kernel(const I* __restrict__ ids, int32_t* __restrict__ keys,
                            int32_t* __restrict__ vals, int64_t n, int64_t v) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < n;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t id = load_id(ids, p);
    keys[p] = id >= 0 && id < v ? static_cast<int32_t>(id) : 0;
    vals[p] = static_cast<int32_t>(p);
  }
}

// For each k that starts a run of equal sorted keys: dw[key, j] = sum over the run, in order, of
// g[vals[q], j] (kAdd: dw[key, j] += that sum, in O = f32). Block k handles sorted position k
// (grid-stride); blocks that do not start a run return at once. Each key has one run, so no two
// blocks write one row.
template <typename T, typename O, bool kAdd>
__global__ void scatter_runs_kernel(const int32_t* __restrict__ keys,
                                    const int32_t* __restrict__ vals, const T* __restrict__ g,
                                    O* __restrict__ dw, int64_t n, int64_t c) {
  using A = acc_t<T>;
  for (int64_t k = blockIdx.x; k < n; k += gridDim.x) {
    const int32_t key = keys[k];
    if (k > 0 && keys[k - 1] == key) continue;
    O* dr = dw + static_cast<int64_t>(key) * c;
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
      A acc = 0;
      for (int64_t q = k; q < n && keys[q] == key; ++q)
        acc += to_acc(g[static_cast<int64_t>(vals[q]) * c + j]);
      if constexpr (kAdd) {
        dr[j] += acc;
      } else {
        dr[j] = from_acc<O>(acc);
      }
    }
  }
}

// A device flag for the first bad position, reset to "none" on the compute stream.
Tensor make_bad_flag(Device d) {
  Tensor f = Tensor::empty({1}, DType::kI64, d);
  KILN_CUDA_CHECK(cudaMemsetAsync(f.raw(), 0xff, sizeof(unsigned long long), compute_stream()));
  return f;
}

// Reads the flag (waits for the compute stream) and throws the CPU op's error for a bad id.
void check_bad_flag(const Tensor& flag, const Tensor& ids, int64_t v) {
  unsigned long long bad = kNoBadId;
  KILN_CUDA_CHECK(
      cudaMemcpyAsync(&bad, flag.raw(), sizeof(bad), cudaMemcpyDeviceToHost, compute_stream()));
  KILN_CUDA_CHECK(cudaStreamSynchronize(compute_stream()));
  if (bad == kNoBadId) return;
  const int64_t p = static_cast<int64_t>(bad);
  const int64_t id = raw::contiguous(ids).reshape({-1}).narrow(0, p, 1).to_ints()[0];
  KILN_CHECK(false) << kOp << ": id " << id << " at flat position " << p << " of ids " << ids.str()
                    << " is out of range [0, V = " << v << ")";
}

#define KILN_EMB_DISPATCH_ID(dtype, I, ...)                      \
  do {                                                           \
    switch (dtype) {                                             \
      case DType::kI32: {                                        \
        using I = int32_t;                                       \
        __VA_ARGS__;                                             \
        break;                                                   \
      }                                                          \
      case DType::kI64: {                                        \
        using I = int64_t;                                       \
        __VA_ARGS__;                                             \
        break;                                                   \
      }                                                          \
      case DType::kU16: {                                        \
        using I = uint16_t;                                      \
        __VA_ARGS__;                                             \
        break;                                                   \
      }                                                          \
      default:                                                   \
        KILN_CHECK(false) << kOp << ": bad ids dtype " << dtype; \
    }                                                            \
  } while (0)

template <typename U, typename I>
void launch_gather(const Tensor& w, const Tensor& ids, const Tensor& out, int64_t n, int64_t v,
                   int64_t row_bytes, const Tensor& flag) {
  const int64_t row_units = row_bytes / static_cast<int64_t>(sizeof(U));
  const int threads = row_threads(row_units, 256);
  gather_kernel<U, I><<<row_blocks(n), threads, 0, compute_stream()>>>(
      static_cast<const U*>(w.raw()), ids.data<I>(), static_cast<U*>(out.raw()), n, v, row_units,
      static_cast<unsigned long long*>(flag.raw()));
  KILN_CUDA_CHECK_LAUNCH();
}

// The widest unit (bytes) that divides the row size and both base addresses.
int copy_unit(int64_t row_bytes, const void* a, const void* b) {
  for (int u : {16, 8, 4, 2}) {
    if (row_bytes % u == 0 && reinterpret_cast<uintptr_t>(a) % u == 0 &&
        reinterpret_cast<uintptr_t>(b) % u == 0)
      return u;
  }
  return 1;
}

}  // namespace

// weight (V, C), ids (...) i32 / i64 / u16 on weight's device. Returns (..., C) in weight's dtype.
Tensor embedding_forward(const Tensor& weight, const Tensor& ids) {
  check_on_current_device(kOp, "weight", weight);
  const int64_t v = weight.size(0), c = weight.size(1);
  Tensor w = raw::contiguous(weight), idc = raw::contiguous(ids);
  Shape out_shape = ids.shape();
  out_shape.push_back(c);
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  const int64_t n = ids.numel();
  const int64_t row_bytes = c * static_cast<int64_t>(dtype_size(weight.dtype()));
  if (n == 0) return out;
  Tensor flag = make_bad_flag(weight.device());
  KILN_EMB_DISPATCH_ID(ids.dtype(), I, {
    switch (copy_unit(row_bytes, w.raw(), out.raw())) {
      case 16:
        launch_gather<uint4, I>(w, idc, out, n, v, row_bytes, flag);
        break;
      case 8:
        launch_gather<uint2, I>(w, idc, out, n, v, row_bytes, flag);
        break;
      case 4:
        launch_gather<uint32_t, I>(w, idc, out, n, v, row_bytes, flag);
        break;
      case 2:
        launch_gather<uint16_t, I>(w, idc, out, n, v, row_bytes, flag);
        break;
      default:
        launch_gather<uint8_t, I>(w, idc, out, n, v, row_bytes, flag);
    }
  });
  check_bad_flag(flag, ids, v);
  return out;
}

namespace {

// The ids sorted (keys) with their positions (vals), both (n) i32, for scatter_runs_kernel.
std::pair<Tensor, Tensor> sorted_ids(const Tensor& ids, int64_t v) {
  const int64_t n = ids.numel();
  KILN_CHECK(n <= INT32_MAX && v <= INT32_MAX)
      << kOp << ": the CUDA backward supports fewer than 2^31 ids and rows (ids " << ids.str()
      << ", V = " << v << ")";
  const Tensor idc = raw::contiguous(ids);
  const Device dev = ids.device();
  Tensor keys = Tensor::empty({n}, DType::kI32, dev), vals = Tensor::empty({n}, DType::kI32, dev);
  Tensor skeys = Tensor::empty({n}, DType::kI32, dev), svals = Tensor::empty({n}, DType::kI32, dev);
  // No bad-id flag read back (it would wait for the whole backward): these are the ids the forward
  // that saved them checked, and keys_kernel sends an id out of range to row 0, never out of
  // bounds.
  KILN_EMB_DISPATCH_ID(ids.dtype(), I, {
    keys_kernel<I><<<blocks_for(n), 256, 0, compute_stream()>>>(idc.data<I>(), keys.data<int32_t>(),
                                                                vals.data<int32_t>(), n, v);
    KILN_CUDA_CHECK_LAUNCH();
  });
  int end_bit = 1;
  while (end_bit < 31 && (int64_t{1} << end_bit) < v) ++end_bit;
  size_t temp_bytes = 0;
  KILN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, temp_bytes, keys.data<int32_t>(), skeys.data<int32_t>(), vals.data<int32_t>(),
      svals.data<int32_t>(), static_cast<int>(n), 0, end_bit, compute_stream()));
  Tensor temp = Tensor::empty({static_cast<int64_t>(temp_bytes / 2) + 1}, DType::kU16, dev);
  KILN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      temp.raw(), temp_bytes, keys.data<int32_t>(), skeys.data<int32_t>(), vals.data<int32_t>(),
      svals.data<int32_t>(), static_cast<int>(n), 0, end_bit, compute_stream()));
  return {skeys, svals};
}

}  // namespace

// g (..., C) the gradient of the output, ids (...) as in the forward. Returns dW (V, C) in
// w_dtype on g's device.
Tensor embedding_backward(const Tensor& g, const Tensor& ids, const Shape& w_shape, DType w_dtype) {
  check_on_current_device(kOp, "grad", g);
  const int64_t v = w_shape[0], c = w_shape[1], n = ids.numel();
  Tensor gc = raw::convert(g, w_dtype);
  Tensor dw = Tensor::empty(w_shape, w_dtype, g.device());
  if (dw.numel() == 0) return dw;
  KILN_CUDA_CHECK(
      cudaMemsetAsync(dw.raw(), 0, dw.nbytes(), compute_stream()));  // 0.0 in every dtype
  if (n == 0) return dw;
  const auto [skeys, svals] = sorted_ids(ids, v);
  KILN_CUDA_DISPATCH_FLOAT(w_dtype, kOp, T, {
    scatter_runs_kernel<T, T, false><<<row_blocks(n), row_threads(c, 256), 0, compute_stream()>>>(
        skeys.data<int32_t>(), svals.data<int32_t>(), gc.data<T>(), dw.data<T>(), n, c);
    KILN_CUDA_CHECK_LAUNCH();
  });
  return dw;
}

// The same sums (over the rows of g in its own dtype, accumulated in f32) added into the f32
// (V, C) tensor `into`, or written over it (rows no id names zeroed) with overwrite.
void embedding_backward_into(const Tensor& g, const Tensor& ids, const Tensor& into,
                             bool overwrite) {
  check_on_current_device(kOp, "grad", g);
  KILN_CHECK(into.dtype() == DType::kF32 && into.is_contiguous() && into.dim() == 2)
      << kOp << ": the gradient target must be a contiguous f32 (V, C) tensor, got " << into.str();
  const int64_t v = into.size(0), c = into.size(1), n = ids.numel();
  if (into.numel() == 0) return;
  if (overwrite)  // rows no id names are zero
    KILN_CUDA_CHECK(cudaMemsetAsync(into.raw(), 0, into.nbytes(), compute_stream()));
  if (n == 0) return;
  const Tensor gc = raw::contiguous(g);
  const auto [skeys, svals] = sorted_ids(ids, v);
  KILN_CUDA_DISPATCH_FLOAT(g.dtype(), kOp, T, {
    const auto launch = [&](auto kernel) {
      kernel<<<row_blocks(n), row_threads(c, 256), 0, compute_stream()>>>(
          skeys.data<int32_t>(), svals.data<int32_t>(), gc.data<T>(), into.data<float>(), n, c);
    };
    if (overwrite) {
      launch(scatter_runs_kernel<T, float, false>);
    } else {
      launch(scatter_runs_kernel<T, float, true>);
    }
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace kiln::cuda

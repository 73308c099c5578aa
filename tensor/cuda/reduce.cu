// Reduction kernels. One kernel shape serves sum and max: a group of G threads computes one
// output (or one chunk of it). When the reduced elements are the input's closest ones in
// memory, a warp or a block shares each output so that neighbouring lanes read neighbouring
// elements; otherwise (e.g. summing over the batch dim of [batch, features]) each thread
// owns one output and neighbouring threads read neighbouring outputs. Long sums with few
// outputs are split into chunks whose partial sums a second pass adds up, so the whole GPU
// works on them; no atomics, so results are deterministic.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <type_traits>

#include "tensor/cuda/check.h"
#include "tensor/cuda/convert.h"
#include "tensor/cuda/group_reduce.cuh"
#include "tensor/cuda/reduce.h"
#include "tensor/cuda/stream.h"
#include "tensor/cuda/strided.cuh"

namespace longnet::cuda {

namespace {

constexpr int kThreads = 256;
// Enough threads in flight to fill a large GPU (H100: 132 SMs x 2048).
constexpr std::int64_t kTargetThreads = std::int64_t{1} << 18;
// A chunk gives each of its threads at least this many elements.
constexpr std::int64_t kMinPerThread = 16;

// Output o (row-major over the kept dims) reduces elements r in [0, count) of the reduced
// dims, found at kept.offset(o) + reduced.offset(r); chunk c covers r in
// [c * chunk_size, (c + 1) * chunk_size).
struct ReduceLayout {
  StridedIndexer<1> kept;
  StridedIndexer<1> reduced;
  std::int64_t outputs = 0;
  std::int64_t count = 0;
  std::int64_t chunks = 1;
  std::int64_t chunk_size = 0;
};

// ---- reducers: the state, how an element enters it, how two states combine ------------------

template <class T, class Acc>
struct SumOf {
  using State = Acc;
  const T* in;
  __device__ static State identity() { return Acc(0); }
  __device__ State element(std::int64_t at, std::int64_t) const {
    return static_cast<Acc>(load_compute(in[at]));
  }
  __device__ static State combine(State a, State b) { return a + b; }
};

template <class C>
struct MaxState {
  C value;
  std::int64_t index;
};

template <class C>
__device__ MaxState<C> shuffle_xor(MaxState<C> s, int mask) {
  return {__shfl_xor_sync(kFullWarp, s.value, mask), __shfl_xor_sync(kFullWarp, s.index, mask)};
}

// Largest value, first index on ties; a NaN beats every number, the first NaN every NaN.
// The order of combination does not matter, so a tree gives the CPU's sequential answer.
template <class T>
struct MaxOf {
  using C = compute_t<T>;
  using State = MaxState<C>;
  const T* in;
  __device__ static State identity() {
    return {std::numeric_limits<C>::lowest(), std::numeric_limits<std::int64_t>::max()};
  }
  __device__ State element(std::int64_t at, std::int64_t r) const {
    return {load_compute(in[at]), r};
  }
  __device__ static State combine(State a, State b) {
    if constexpr (std::is_floating_point_v<C>) {
      bool a_nan = std::isnan(a.value);
      bool b_nan = std::isnan(b.value);
      if (a_nan || b_nan) {
        if (a_nan && b_nan) return a.index < b.index ? a : b;
        return a_nan ? a : b;
      }
    }
    if (a.value != b.value) return a.value > b.value ? a : b;
    return a.index < b.index ? a : b;
  }
};

// ---- writers: where a finished state goes -------------------------------------------------

template <class T, class Acc>
struct WriteSum {
  T* out;
  __device__ void operator()(std::int64_t o, std::int64_t, Acc acc) const {
    out[o] = store_compute<T>(static_cast<compute_t<T>>(acc));
  }
};

// Chunk c's partial sum of output o, at [c, o] of a [chunks, outputs] workspace.
template <class Acc>
struct WritePartial {
  Acc* partial;
  std::int64_t outputs;
  __device__ void operator()(std::int64_t o, std::int64_t c, Acc acc) const {
    partial[c * outputs + o] = acc;
  }
};

template <class T>
struct WriteMax {
  T* values;
  std::int64_t* indices;
  __device__ void operator()(std::int64_t o, std::int64_t, MaxState<compute_t<T>> s) const {
    values[o] = store_compute<T>(s.value);
    indices[o] = s.index;
  }
};

// ---- the kernel ----------------------------------------------------------------------------

// Group g (G consecutive threads) computes output g % outputs over chunk g / outputs, so
// that with G = 1 neighbouring threads take neighbouring outputs.
template <int G, class Reducer, class Writer>
__global__ void reduce_kernel(ReduceLayout layout, Reducer reducer, Writer write) {
  using State = typename Reducer::State;
  int lane = static_cast<int>(threadIdx.x) % G;
  std::int64_t groups_per_block = blockDim.x / G;
  std::int64_t groups = layout.outputs * layout.chunks;
  // Every thread of a group runs the same iterations (for G = blockDim, the whole block), as
  // group_reduce requires.
  for (std::int64_t g = blockIdx.x * groups_per_block + threadIdx.x / G; g < groups;
       g += gridDim.x * groups_per_block) {
    std::int64_t o = g % layout.outputs;
    std::int64_t c = g / layout.outputs;
    std::int64_t base = layout.kept.offset(o);
    std::int64_t begin = c * layout.chunk_size;
    std::int64_t end =
        begin + layout.chunk_size < layout.count ? begin + layout.chunk_size : layout.count;
    State s = Reducer::identity();
    for (std::int64_t r = begin + lane; r < end; r += G) {
      s = Reducer::combine(s, reducer.element(base + layout.reduced.offset(r), r));
    }
    s = group_reduce<G>(s, [](State a, State b) { return Reducer::combine(a, b); });
    if (lane == 0) write(o, c, s);
  }
}

// ---- launchers -----------------------------------------------------------------------------

std::int64_t smallest_stride(const StridedIndexer<1>& indexer) {
  std::int64_t best = std::numeric_limits<std::int64_t>::max();
  for (int d = 0; d < indexer.ndim; ++d) best = std::min(best, std::abs(indexer.strides[0][d]));
  return best;
}

// Threads per output: a block or a warp when the reduced elements lie closest together in
// memory (long reductions get the block), else one.
int group_size(const ReduceLayout& layout) {
  bool inner = smallest_stride(layout.reduced) <= smallest_stride(layout.kept);
  if (!inner) return 1;
  return layout.count >= 4096 ? kThreads : 32;
}

template <class Reducer, class Writer>
void launch(const ReduceLayout& layout, int group, const Reducer& reducer, const Writer& write,
            cudaStream_t stream) {
  std::int64_t groups = layout.outputs * layout.chunks;
  std::int64_t groups_per_block = kThreads / group;
  auto blocks = static_cast<unsigned>(
      std::min<std::int64_t>((groups + groups_per_block - 1) / groups_per_block, 65536));
  switch (group) {
    case 1:
      reduce_kernel<1><<<blocks, kThreads, 0, stream>>>(layout, reducer, write);
      break;
    case 32:
      reduce_kernel<32><<<blocks, kThreads, 0, stream>>>(layout, reducer, write);
      break;
    default:
      reduce_kernel<kThreads><<<blocks, kThreads, 0, stream>>>(layout, reducer, write);
      break;
  }
  LN_CUDA_CHECK(cudaGetLastError());
}

// The layout of reducing t over the dims flagged in reduced.
ReduceLayout layout_of(const Tensor& t, const std::vector<bool>& reduced, const char* op) {
  Shape kept_shape;
  Strides kept_strides;
  Shape reduced_shape;
  Strides reduced_strides;
  for (std::int64_t d = 0; d < t.dim(); ++d) {
    (reduced[d] ? reduced_shape : kept_shape).push_back(t.shape()[d]);
    (reduced[d] ? reduced_strides : kept_strides).push_back(t.strides()[d]);
  }
  ReduceLayout layout;
  layout.kept = make_indexer<1>(kept_shape, {kept_strides}, op);
  layout.reduced = make_indexer<1>(reduced_shape, {reduced_strides}, op);
  layout.outputs = numel(kept_shape);
  layout.count = numel(reduced_shape);
  layout.chunk_size = layout.count;
  return layout;
}

// Sums in (read through layout) into out[o] for every output o, accumulating in Acc.
template <class In, class Out, class Acc>
void sum_into(const In* in, ReduceLayout layout, Out* out, Device device, cudaStream_t stream) {
  int group = group_size(layout);
  // Chunks enough to fill the GPU, but not so many that threads get little to do.
  std::int64_t wanted = kTargetThreads / (layout.outputs * group);
  std::int64_t at_most = layout.count / (group * kMinPerThread);
  std::int64_t chunks = std::max<std::int64_t>(1, std::min(wanted, at_most));
  if (chunks == 1) {
    launch(layout, group, SumOf<In, Acc>{in}, WriteSum<Out, Acc>{out}, stream);
    return;
  }
  layout.chunk_size = (layout.count + chunks - 1) / chunks;
  layout.chunks = (layout.count + layout.chunk_size - 1) / layout.chunk_size;
  Tensor partial = empty({layout.chunks, layout.outputs}, {dtype_of<Acc>(), device});
  launch(layout, group, SumOf<In, Acc>{in}, WritePartial<Acc>{partial.data<Acc>(), layout.outputs},
         stream);

  // Then the columns of the [chunks, outputs] partial sums, the same way.
  ReduceLayout finish;
  finish.kept = make_indexer<1>({layout.outputs}, {Strides{1}}, "sum");
  finish.reduced = make_indexer<1>({layout.chunks}, {Strides{layout.outputs}}, "sum");
  finish.outputs = layout.outputs;
  finish.count = layout.chunks;
  finish.chunk_size = layout.chunks;
  sum_into<Acc, Out, Acc>(partial.data<Acc>(), finish, out, device, stream);
}

}  // namespace

void sum(const Tensor& t, const std::vector<std::int64_t>& dims, const Tensor& out) {
  if (out.numel() == 0) return;
  DeviceGuard guard(t.device().index);
  std::vector<bool> reduced(static_cast<std::size_t>(t.dim()), false);
  for (auto d : dims) reduced[d] = true;
  ReduceLayout layout = layout_of(t, reduced, "sum");
  dispatch(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Acc = std::conditional_t<std::is_integral_v<T>, std::int64_t,
                                   std::conditional_t<std::is_same_v<T, double>, double, float>>;
    sum_into<T, T, Acc>(t.data<T>(), layout, out.data<T>(), t.device(),
                        current_stream(t.device().index));
  });
}

void max(const Tensor& t, std::int64_t dim, const Tensor& values, const Tensor& indices) {
  if (values.numel() == 0) return;
  DeviceGuard guard(t.device().index);
  std::vector<bool> reduced(static_cast<std::size_t>(t.dim()), false);
  reduced[dim] = true;
  ReduceLayout layout = layout_of(t, reduced, "max");
  int group = group_size(layout);
  cudaStream_t stream = current_stream(t.device().index);
  dispatch(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(layout, group, MaxOf<T>{t.data<T>()},
           WriteMax<T>{values.data<T>(), indices.data<std::int64_t>()}, stream);
  });
}

}  // namespace longnet::cuda

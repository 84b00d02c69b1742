// CUDA kernels: grid-stride loops, float32 math on float32/float16/bfloat16 storage, 16-byte loads
// (8 bytes for half types in the Philox kernel) when every pointer is aligned, launched on the
// caller's stream. Compiled with --fmad=false so results match the CPU kernel and the torch reference.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "../philox.h"
#include "../reverse_step.h"

namespace pyddpm {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// N consecutive elements moved as one aligned access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ void load(const T* p, float (&f)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int l = 0; l < N; ++l) f[l] = to_float(pk.v[l]);
}

template <typename T, int N>
__device__ __forceinline__ void store(T* p, const float (&f)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int l = 0; l < N; ++l) pk.v[l] = from_float<T>(f[l]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// step_element for element j with its history (float32, read and shifted in place).
__device__ __forceinline__ float step_with_history(float x, float eps, float z, const StepCoef& k,
                                                   bool noise, const History& hist, int64_t j) {
  float H[kMaxHistory];
#pragma unroll
  for (int m = 0; m < kMaxHistory; ++m)
    if (m < hist.count) H[m] = hist.p[m][j];
  const float v = step_element(x, eps, z, k, k.clip, noise, hist.count, H);
#pragma unroll
  for (int m = 0; m < kMaxHistory; ++m)
    if (m < hist.count) hist.p[m][j] = H[m];
  return v;
}

// Noise from a tensor (z != nullptr) or none. vec: every pointer 16-byte aligned.
template <typename T>
__global__ void affine_kernel(T* out, const T* x, const T* eps, const T* z, int64_t total,
                              StepCoef k, bool vec, History hist) {
  constexpr int N = 16 / sizeof(T);
  const bool noise = z != nullptr;
  int64_t done = 0;
  if (vec) {
    const int64_t packs = total / N;
    for (int64_t v = thread_index(); v < packs; v += grid_stride()) {
      float xv[N], ev[N], zv[N] = {}, o[N];
      load<T, N>(x + v * N, xv);
      load<T, N>(eps + v * N, ev);
      if (noise) load<T, N>(z + v * N, zv);
#pragma unroll
      for (int l = 0; l < N; ++l)
        o[l] = step_with_history(xv[l], ev[l], zv[l], k, noise, hist, v * N + l);
      store<T, N>(out + v * N, o);
    }
    done = packs * N;
  }
  for (int64_t j = done + thread_index(); j < total; j += grid_stride()) {
    const float zv = noise ? to_float(z[j]) : 0.f;
    out[j] = from_float<T>(step_with_history(to_float(x[j]), to_float(eps[j]), zv, k, noise, hist, j));
  }
}

struct PhiloxParams {
  int64_t batch, n, groups;
  uint64_t sample_offset;
  uint32_t k0, k1, step;
};

// One thread per Philox call (4 consecutive elements of one sample). kNormalOnly: out = z, x and eps
// unused. vec: n % 4 == 0 and every pointer 4-element aligned. With sched.index set, the coefficients
// and the Philox step come from the schedule row *sched.index (k.clip is kept), and sigma = 0 adds no
// noise; otherwise the caller launches it only when sigma != 0.
template <typename T, bool kNormalOnly>
__global__ void philox_kernel(T* out, const T* x, const T* eps, PhiloxParams P, StepCoef k,
                              bool vec, Schedule sched, History hist) {
  if (sched.index != nullptr) {
    const int64_t s = *sched.index;
    if (s < 0 || s >= sched.rows) return;
    k = schedule_row(sched.table + kRowWidth * s, k.clip);
    P.step = static_cast<uint32_t>(sched.steps[s]);
  }
  const bool noise = kNormalOnly || k.sigma != 0.f;
  const int64_t work = P.batch * P.groups;
  const bool narrow = work <= 0xffffffffLL;  // 32-bit division is much cheaper
  for (int64_t h = thread_index(); h < work; h += grid_stride()) {
    const int64_t i = narrow ? static_cast<int64_t>(static_cast<uint32_t>(h) /
                                                    static_cast<uint32_t>(P.groups))
                             : h / P.groups;
    const int64_t g = h - i * P.groups;
    float z[4] = {0.f, 0.f, 0.f, 0.f};
    if (noise)
      philox::normals4(static_cast<uint32_t>(g), P.sample_offset + static_cast<uint64_t>(i), P.step,
                       P.k0, P.k1, z[0], z[1], z[2], z[3]);
    const int64_t base = i * P.n + 4 * g;
    if (vec) {
      float o[4];
      if (kNormalOnly) {
#pragma unroll
        for (int l = 0; l < 4; ++l) o[l] = z[l];
      } else {
        float xv[4], ev[4];
        load<T, 4>(x + base, xv);
        load<T, 4>(eps + base, ev);
#pragma unroll
        for (int l = 0; l < 4; ++l)
          o[l] = step_with_history(xv[l], ev[l], z[l], k, noise, hist, base + l);
      }
      store<T, 4>(out + base, o);
    } else {
      const int64_t lanes = min(int64_t{4}, P.n - 4 * g);
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        if (l < lanes) {
          const int64_t j = base + l;
          out[j] = from_float<T>(kNormalOnly ? z[l]
                                             : step_with_history(to_float(x[j]), to_float(eps[j]),
                                                                 z[l], k, noise, hist, j));
        }
      }
    }
  }
}

// Calls f(StorageType<T>{}) with T the storage type of dtype: the one place a dtype code becomes a type.
template <typename T>
struct StorageType {
  using type = T;
};

template <typename F>
void with_storage_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      return f(StorageType<float>{});
    case DType::kFloat16:
      return f(StorageType<__half>{});
    case DType::kBFloat16:
      return f(StorageType<__nv_bfloat16>{});
  }
  throw std::invalid_argument("pyddpm._C: unknown dtype code");
}

bool aligned(const void* p, size_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

int grid_for(int64_t work) {
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("pyddpm._C: cannot query the CUDA device: ") +
                             cudaGetErrorString(err));
  const int64_t wanted = (work + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t{sms} * 8)));
}

void check_launch() {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("pyddpm._C: CUDA kernel launch failed: ") +
                             cudaGetErrorString(err));
}

PhiloxParams philox_params(int64_t batch, int64_t n, const PhiloxArgs& rng) {
  return PhiloxParams{batch,
                      n,
                      (n + 3) / 4,
                      rng.sample_offset,
                      static_cast<uint32_t>(rng.seed),
                      static_cast<uint32_t>(rng.seed >> 32),
                      rng.step};
}

template <typename T>
void launch_step(void* out_, const void* x_, const void* eps_, const void* noise_, int64_t batch,
                 int64_t n, const StepCoef& coef, const PhiloxArgs& rng, cudaStream_t stream,
                 const History& hist) {
  T* out = static_cast<T*>(out_);
  const T* x = static_cast<const T*>(x_);
  const T* eps = static_cast<const T*>(eps_);
  const T* noise = static_cast<const T*>(noise_);
  const int64_t total = batch * n;
  if (coef.sigma != 0.f && noise == nullptr) {
    const PhiloxParams P = philox_params(batch, n, rng);
    const size_t pack = 4 * sizeof(T);
    const bool vec = n % 4 == 0 && aligned(out, pack) && aligned(x, pack) && aligned(eps, pack);
    const int64_t work = batch * P.groups;
    philox_kernel<T, false>
        <<<grid_for(work), kThreads, 0, stream>>>(out, x, eps, P, coef, vec, Schedule{}, hist);
  } else {
    const T* z = coef.sigma != 0.f ? noise : nullptr;
    const bool vec = aligned(out, 16) && aligned(x, 16) && aligned(eps, 16) && aligned(z, 16);
    const int64_t per_thread = vec ? 16 / sizeof(T) : 1;
    const int64_t work = (total + per_thread - 1) / per_thread;
    affine_kernel<T><<<grid_for(work), kThreads, 0, stream>>>(out, x, eps, z, total, coef, vec, hist);
  }
  check_launch();
}

template <typename T>
void launch_normal(void* out_, int64_t batch, int64_t n, const PhiloxArgs& rng,
                   cudaStream_t stream) {
  T* out = static_cast<T*>(out_);
  const PhiloxParams P = philox_params(batch, n, rng);
  const bool vec = n % 4 == 0 && aligned(out, 4 * sizeof(T));
  philox_kernel<T, true>
      <<<grid_for(batch * P.groups), kThreads, 0, stream>>>(out, nullptr, nullptr, P, StepCoef{},
                                                           vec, Schedule{}, History{});
  check_launch();
}

template <typename T>
void launch_scheduled(void* x_, const void* eps_, int64_t batch, int64_t n, const Schedule& sched,
                      bool clip, const PhiloxArgs& rng, cudaStream_t stream, const History& hist) {
  T* x = static_cast<T*>(x_);
  const T* eps = static_cast<const T*>(eps_);
  const PhiloxParams P = philox_params(batch, n, rng);
  const size_t pack = 4 * sizeof(T);
  const bool vec = n % 4 == 0 && aligned(x, pack) && aligned(eps, pack);
  StepCoef clip_only;
  clip_only.clip = clip;
  philox_kernel<T, false>
      <<<grid_for(batch * P.groups), kThreads, 0, stream>>>(x, x, eps, P, clip_only, vec, sched, hist);
  check_launch();
}

}  // namespace

void reverse_step_cuda(void* out, const void* x, const void* eps, const void* noise, DType dtype,
                       int64_t batch, int64_t numel_per_sample, const StepCoef& coef,
                       const PhiloxArgs& rng, uintptr_t stream, const History& history) {
  if (batch * numel_per_sample == 0) return;
  with_storage_type(dtype, [&](auto type) {
    launch_step<typename decltype(type)::type>(out, x, eps, noise, batch, numel_per_sample, coef, rng,
                                               reinterpret_cast<cudaStream_t>(stream), history);
  });
}

void reverse_step_scheduled_cuda(void* x, const void* eps, DType dtype, int64_t batch,
                                 int64_t numel_per_sample, const Schedule& sched, bool clip,
                                 const PhiloxArgs& rng, uintptr_t stream, const History& history) {
  if (batch * numel_per_sample == 0) return;
  with_storage_type(dtype, [&](auto type) {
    launch_scheduled<typename decltype(type)::type>(x, eps, batch, numel_per_sample, sched, clip, rng,
                                                    reinterpret_cast<cudaStream_t>(stream), history);
  });
}

void normal_cuda(void* out, DType dtype, int64_t batch, int64_t numel_per_sample,
                 const PhiloxArgs& rng, uintptr_t stream) {
  if (batch * numel_per_sample == 0) return;
  with_storage_type(dtype, [&](auto type) {
    launch_normal<typename decltype(type)::type>(out, batch, numel_per_sample, rng,
                                                 reinterpret_cast<cudaStream_t>(stream));
  });
}

}  // namespace pyddpm

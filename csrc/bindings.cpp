// pybind11 module pyddpm._C: converts Python ints/floats (data_ptr() values, counts, scalars, a CUDA
// stream handle) into kernel calls. It sees integers, not tensors, so it cannot tell whether a pointer
// addresses batch * numel_per_sample elements of that dtype on that device, or whether buffers overlap:
// pyddpm/ops.py checks the tensors before every call, and the kernels trust those checks. Here only
// what the integers show is refused: unknown device or dtype codes, CUDA in a build without it, a
// dtype the CPU kernel lacks, counts that are negative or overflow (int64, the Philox counter), null
// pointers, a seed >= 2^63.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "dropout.h"
#include "group_norm.h"
#include "log_sigmoid.h"
#include "silu.h"
#include "philox.h"
#include "reverse_step.h"

namespace py = pybind11;

#ifndef PYDDPM_VERSION
#define PYDDPM_VERSION "0+unknown"
#endif
#ifndef PYDDPM_CUDA_REQUEST
#define PYDDPM_CUDA_REQUEST "AUTO"
#endif
#ifndef PYDDPM_CUDA_VERSION
#define PYDDPM_CUDA_VERSION ""
#endif
#ifndef PYDDPM_CUDA_ARCHS
#define PYDDPM_CUDA_ARCHS ""
#endif
#ifndef PYDDPM_COMPILER
#define PYDDPM_COMPILER ""
#endif

namespace {

constexpr int kCpu = 0;
constexpr int kCuda = 1;

constexpr bool kWithCuda =
#if defined(PYDDPM_WITH_CUDA)
    true;
#else
    false;
#endif

constexpr bool kWithOpenmp =
#if defined(PYDDPM_WITH_OPENMP)
    true;
#else
    false;
#endif

void check_common(int device, int dtype, uintptr_t out, int64_t batch, int64_t n) {
  if (device != kCpu && device != kCuda)
    throw std::invalid_argument("device must be 0 (cpu) or 1 (cuda), got " + std::to_string(device));
  if (device == kCuda && !kWithCuda)
    throw std::runtime_error("pyddpm._C was built without CUDA; rebuild with nvcc on PATH "
                             "(PYDDPM_CUDA=1 pip install .)");
  if (dtype < 0 || dtype > 2)
    throw std::invalid_argument("dtype must be 0 (float32), 1 (float16) or 2 (bfloat16)");
  if (device == kCpu && dtype != 0) throw std::invalid_argument("the CPU kernel takes float32 only");
  if (batch < 0 || n < 0) throw std::invalid_argument("batch and numel_per_sample must be >= 0");
  if (n > 0 && batch > INT64_MAX / n) throw std::invalid_argument("batch * numel_per_sample overflows");
  if ((n + 3) / 4 > 0xffffffffLL)
    throw std::invalid_argument("numel_per_sample must be < 2^34 (Philox counter word 0)");
  if (batch * n > 0 && out == 0) throw std::invalid_argument("out is a null pointer");
}

pyddpm::PhiloxArgs philox_args(uint64_t seed, uint32_t step, uint64_t sample_offset) {
  if (seed >> 63) throw std::invalid_argument("seed must be < 2^63");
  return pyddpm::PhiloxArgs{seed, step, sample_offset};
}

// The coefficients of a reverse step from its kRowWidth numbers (a, b, sigma, c, p, q, lo, hi, h_0..h_2).
pyddpm::StepCoef step_coef(const std::vector<float>& row, bool clip) {
  if (row.size() != static_cast<size_t>(pyddpm::kRowWidth))
    throw std::invalid_argument("coef must hold " + std::to_string(pyddpm::kRowWidth) + " numbers, got " +
                                std::to_string(row.size()));
  return pyddpm::schedule_row(row.data(), clip);
}

// The history buffers from their pointers (0 to kMaxHistory of them, none null when there is work).
pyddpm::History history_of(const std::vector<uintptr_t>& pointers, int64_t total) {
  if (pointers.size() > static_cast<size_t>(pyddpm::kMaxHistory))
    throw std::invalid_argument("at most " + std::to_string(pyddpm::kMaxHistory) +
                                " history buffers, got " + std::to_string(pointers.size()));
  pyddpm::History h;
  h.count = static_cast<int>(pointers.size());
  for (int m = 0; m < h.count; ++m) {
    if (total > 0 && pointers[m] == 0) throw std::invalid_argument("a history buffer is a null pointer");
    h.p[m] = reinterpret_cast<float*>(pointers[m]);
  }
  return h;
}

void reverse_step(int device, int dtype, uintptr_t out, uintptr_t x_t, uintptr_t eps_hat,
                  uintptr_t noise, int64_t batch, int64_t numel_per_sample,
                  const std::vector<float>& coef, bool clip, const std::vector<uintptr_t>& history,
                  uint64_t seed, uint32_t step, uint64_t sample_offset, uintptr_t stream,
                  int num_threads) {
  check_common(device, dtype, out, batch, numel_per_sample);
  if (batch * numel_per_sample > 0 && (x_t == 0 || eps_hat == 0))
    throw std::invalid_argument("x_t and eps_hat must not be null pointers");
  const pyddpm::StepCoef k = step_coef(coef, clip);
  const pyddpm::History hist = history_of(history, batch * numel_per_sample);
  const pyddpm::PhiloxArgs rng = philox_args(seed, step, sample_offset);
  py::gil_scoped_release release;
  if (device == kCpu) {
    pyddpm::reverse_step_cpu(reinterpret_cast<float*>(out), reinterpret_cast<const float*>(x_t),
                             reinterpret_cast<const float*>(eps_hat),
                             reinterpret_cast<const float*>(noise), batch, numel_per_sample, k, rng,
                             num_threads, hist);
    return;
  }
#if defined(PYDDPM_WITH_CUDA)
  pyddpm::reverse_step_cuda(reinterpret_cast<void*>(out), reinterpret_cast<const void*>(x_t),
                            reinterpret_cast<const void*>(eps_hat),
                            reinterpret_cast<const void*>(noise), static_cast<pyddpm::DType>(dtype),
                            batch, numel_per_sample, k, rng, stream, hist);
#else
  (void)stream;
#endif
}

void reverse_step_scheduled(int device, int dtype, uintptr_t x_t, uintptr_t eps_hat, int64_t batch,
                            int64_t numel_per_sample, uintptr_t table, uintptr_t steps,
                            uintptr_t index, int64_t rows, bool clip,
                            const std::vector<uintptr_t>& history, uint64_t seed,
                            uint64_t sample_offset, uintptr_t stream, int num_threads) {
  check_common(device, dtype, x_t, batch, numel_per_sample);
  if (batch * numel_per_sample > 0 && eps_hat == 0)
    throw std::invalid_argument("eps_hat must not be a null pointer");
  if (table == 0 || steps == 0 || index == 0 || rows < 1)
    throw std::invalid_argument("the schedule needs table, steps and index pointers and rows >= 1");
  const pyddpm::Schedule sched{reinterpret_cast<const float*>(table),
                               reinterpret_cast<const int64_t*>(steps),
                               reinterpret_cast<const int64_t*>(index), rows};
  const pyddpm::History hist = history_of(history, batch * numel_per_sample);
  const pyddpm::PhiloxArgs rng = philox_args(seed, 0, sample_offset);
  py::gil_scoped_release release;
  if (device == kCpu) {
    pyddpm::reverse_step_scheduled_cpu(reinterpret_cast<float*>(x_t),
                                       reinterpret_cast<const float*>(eps_hat), batch,
                                       numel_per_sample, sched, clip, rng, num_threads, hist);
    return;
  }
#if defined(PYDDPM_WITH_CUDA)
  pyddpm::reverse_step_scheduled_cuda(reinterpret_cast<void*>(x_t),
                                      reinterpret_cast<const void*>(eps_hat),
                                      static_cast<pyddpm::DType>(dtype), batch, numel_per_sample,
                                      sched, clip, rng, stream, hist);
#else
  (void)stream;
#endif
}

void normal(int device, int dtype, uintptr_t out, int64_t batch, int64_t numel_per_sample,
            uint64_t seed, uint32_t step, uint64_t sample_offset, uintptr_t stream,
            int num_threads) {
  check_common(device, dtype, out, batch, numel_per_sample);
  const pyddpm::PhiloxArgs rng = philox_args(seed, step, sample_offset);
  py::gil_scoped_release release;
  if (device == kCpu) {
    pyddpm::normal_cpu(reinterpret_cast<float*>(out), batch, numel_per_sample, rng, num_threads);
    return;
  }
#if defined(PYDDPM_WITH_CUDA)
  pyddpm::normal_cuda(reinterpret_cast<void*>(out), static_cast<pyddpm::DType>(dtype), batch,
                      numel_per_sample, rng, stream);
#else
  (void)stream;
#endif
}

// The fast networks' kernels: their ops in pyddpm/accel/kernels.py check every argument (one check per op, run on
// real and fake tensors alike); here the integers are only converted.
void group_norm_nhwc(int dtype, uintptr_t x, uintptr_t add, uintptr_t y, uintptr_t gamma, uintptr_t beta,
                     int64_t batch, int64_t hw, int64_t channels, int64_t groups, double eps, bool silu,
                     uintptr_t mean, uintptr_t rstd, int num_threads) {
  py::gil_scoped_release release;
  pyddpm::group_norm_nhwc_cpu(reinterpret_cast<const void*>(x), reinterpret_cast<const float*>(add),
                              reinterpret_cast<void*>(y), dtype == 2,
                              reinterpret_cast<const float*>(gamma), reinterpret_cast<const float*>(beta),
                              batch, hw, channels, groups, static_cast<float>(eps), silu,
                              reinterpret_cast<float*>(mean), reinterpret_cast<float*>(rstd), num_threads);
}

void group_norm_backward_nhwc(int dtype, uintptr_t x, uintptr_t grad_y, uintptr_t grad_x, uintptr_t mean,
                              uintptr_t rstd, uintptr_t gamma, uintptr_t beta, int64_t batch, int64_t hw,
                              int64_t channels, int64_t groups, bool silu, uintptr_t grad_gamma,
                              uintptr_t grad_beta, int num_threads) {
  py::gil_scoped_release release;
  pyddpm::group_norm_backward_nhwc_cpu(
      reinterpret_cast<const void*>(x), reinterpret_cast<const void*>(grad_y), reinterpret_cast<void*>(grad_x),
      dtype == 2, reinterpret_cast<const float*>(mean), reinterpret_cast<const float*>(rstd),
      reinterpret_cast<const float*>(gamma), reinterpret_cast<const float*>(beta), batch, hw, channels, groups,
      silu, reinterpret_cast<float*>(grad_gamma), reinterpret_cast<float*>(grad_beta), num_threads);
}

void log_sigmoid(int dtype, uintptr_t x, uintptr_t y, int64_t n, int num_threads) {
  py::gil_scoped_release release;
  pyddpm::log_sigmoid_cpu(reinterpret_cast<const void*>(x), reinterpret_cast<void*>(y), dtype == 2, n,
                          num_threads);
}

void log_sigmoid_backward(int dtype, uintptr_t x, uintptr_t grad_y, uintptr_t grad_x, int64_t n, int num_threads) {
  py::gil_scoped_release release;
  pyddpm::log_sigmoid_backward_cpu(reinterpret_cast<const void*>(x), reinterpret_cast<const void*>(grad_y),
                                   reinterpret_cast<void*>(grad_x), dtype == 2, n, num_threads);
}

void silu(int dtype, uintptr_t x, uintptr_t y, int64_t n, int num_threads) {
  py::gil_scoped_release release;
  pyddpm::silu_cpu(reinterpret_cast<const void*>(x), reinterpret_cast<void*>(y), dtype == 2, n, num_threads);
}

void dropout(int dtype, uintptr_t x, uintptr_t y, int64_t n, uint64_t seed, uint32_t threshold, float scale,
             int num_threads) {
  py::gil_scoped_release release;
  pyddpm::dropout_cpu(reinterpret_cast<const void*>(x), reinterpret_cast<void*>(y), dtype == 2, n, seed, threshold,
                      scale, num_threads);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyddpm's fused reverse-step kernels (CPU, optional CUDA) and its CPU GroupNorm, LogSigmoid, SiLU and "
            "dropout, on raw pointers.";
  m.attr("__version__") = PYDDPM_VERSION;

  m.def("cuda_built", [] { return kWithCuda; }, "True if the CUDA kernels were compiled in.");
  m.def(
      "build_info",
      [] {
        py::dict d;
        d["version"] = PYDDPM_VERSION;
        d["cuda"] = kWithCuda;
        d["cuda_request"] = PYDDPM_CUDA_REQUEST;
        d["cuda_version"] = PYDDPM_CUDA_VERSION;
        d["cuda_archs"] = PYDDPM_CUDA_ARCHS;
        d["openmp"] = kWithOpenmp;
        d["compiler"] = PYDDPM_COMPILER;
        return d;
      },
      "How this module was built: version, CUDA (requested/built/version/archs), OpenMP, compiler.");

  m.def("reverse_step", &reverse_step,
        "out = a*x_t + b*eps_hat [+ c*d + sum_k h_k*H_k] [+ sigma*z], d = p*x_t + q*eps_hat (clamped "
        "to [lo, hi] when clip), the K float32 history buffers H shifted in place (H_0 <- d), on raw "
        "pointers (device 0 = cpu, 1 = cuda; dtype 0/1/2 = float32/float16/bfloat16). coef: a, b, "
        "sigma, c, p, q, lo, hi, h_0, h_1, h_2. z is read from noise when it is not 0, else drawn "
        "from Philox(seed, sample_offset + sample, step).",
        py::arg("device"), py::arg("dtype"), py::arg("out"), py::arg("x_t"), py::arg("eps_hat"),
        py::arg("noise"), py::arg("batch"), py::arg("numel_per_sample"), py::arg("coef"),
        py::arg("clip"), py::arg("history"), py::arg("seed"), py::arg("step"),
        py::arg("sample_offset"), py::arg("stream"), py::arg("num_threads"));
  m.def("reverse_step_scheduled", &reverse_step_scheduled,
        "x_t <- the reverse step of schedule row s = *index (table[s]: reverse_step's coef), Philox "
        "step steps[s], noise always from Philox(seed, ...), the history shifted in place. The "
        "schedule is read where the kernel runs, so one CUDA graph replays every step.",
        py::arg("device"), py::arg("dtype"), py::arg("x_t"), py::arg("eps_hat"), py::arg("batch"),
        py::arg("numel_per_sample"), py::arg("table"), py::arg("steps"), py::arg("index"),
        py::arg("rows"), py::arg("clip"), py::arg("history"), py::arg("seed"),
        py::arg("sample_offset"), py::arg("stream"), py::arg("num_threads"));
  m.attr("ROW_WIDTH") = pyddpm::kRowWidth;
  m.attr("MAX_HISTORY") = pyddpm::kMaxHistory;
  m.def("normal", &normal,
        "Fills out (batch x numel_per_sample) with the Philox normals of samples sample_offset + i "
        "at step.",
        py::arg("device"), py::arg("dtype"), py::arg("out"), py::arg("batch"),
        py::arg("numel_per_sample"), py::arg("seed"), py::arg("step"), py::arg("sample_offset"),
        py::arg("stream"), py::arg("num_threads"));
  m.def("group_norm_nhwc", &group_norm_nhwc,
        "y = GroupNorm(x + add) (then SiLU when silu) for channels-last (N, H, W, C) maps x, y on the "
        "CPU (dtype 0/2 = float32/bfloat16; add: float32 (N, C) or 0; gamma, beta: float32 or 0), "
        "statistics in float64.",
        py::arg("dtype"), py::arg("x"), py::arg("add"), py::arg("y"), py::arg("gamma"), py::arg("beta"),
        py::arg("batch"), py::arg("hw"), py::arg("channels"), py::arg("groups"), py::arg("eps"), py::arg("silu"),
        py::arg("mean"), py::arg("rstd"), py::arg("num_threads"));
  m.def("group_norm_backward_nhwc", &group_norm_backward_nhwc,
        "grad_x, and per-sample grad_gamma, grad_beta (float32, batch x channels) of group_norm_nhwc (then SiLU "
        "when silu) from grad_y and the forward's mean and rstd (float32, batch x groups).",
        py::arg("dtype"), py::arg("x"), py::arg("grad_y"), py::arg("grad_x"), py::arg("mean"), py::arg("rstd"),
        py::arg("gamma"), py::arg("beta"), py::arg("batch"), py::arg("hw"), py::arg("channels"),
        py::arg("groups"), py::arg("silu"), py::arg("grad_gamma"), py::arg("grad_beta"), py::arg("num_threads"));
  m.def("log_sigmoid", &log_sigmoid,
        "y = log sigmoid(x) elementwise over n values on the CPU (dtype 0/2 = float32/bfloat16; y may be x).",
        py::arg("dtype"), py::arg("x"), py::arg("y"), py::arg("n"), py::arg("num_threads"));
  m.def("log_sigmoid_backward", &log_sigmoid_backward,
        "grad_x = grad_y * sigmoid(-x) elementwise over n values on the CPU (dtype 0/2 = float32/bfloat16).",
        py::arg("dtype"), py::arg("x"), py::arg("grad_y"), py::arg("grad_x"), py::arg("n"), py::arg("num_threads"));
  m.def("silu", &silu,
        "y = x * sigmoid(x) elementwise over n values on the CPU (dtype 0/2 = float32/bfloat16; y may be x).",
        py::arg("dtype"), py::arg("x"), py::arg("y"), py::arg("n"), py::arg("num_threads"));
  m.def("dropout", &dropout,
        "y = x * (scale or 0) elementwise over n values on the CPU (dtype 0/2 = float32/bfloat16), each element "
        "dropped when its 16-bit Philox word (seed, element index) is below threshold; the backward is the same "
        "call on the gradient.",
        py::arg("dtype"), py::arg("x"), py::arg("y"), py::arg("n"), py::arg("seed"), py::arg("threshold"),
        py::arg("scale"), py::arg("num_threads"));
  m.def(
      "philox4x32_10",
      [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
        pyddpm::philox::philox4x32_10(c0, c1, c2, c3, k0, k1);
        return py::make_tuple(c0, c1, c2, c3);
      },
      "One Philox4x32-10 block (for known-answer tests).", py::arg("c0"), py::arg("c1"),
      py::arg("c2"), py::arg("c3"), py::arg("k0"), py::arg("k1"));
}

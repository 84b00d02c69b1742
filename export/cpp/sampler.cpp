// pyddpm-sampler-cpp: a model exported by pyddpm-export, sampled without Python: Algorithm 2 (Ho et al. 2020) or
// one of the export's few-step plans.
//
//   pyddpm-sampler-cpp MODEL.pt --num N --seed S --out samples.npy [--sampler NAME] [--steps N] [--batch-size B]
//                      [--threads K]
//
// MODEL.pt is sampler.pt or denoiser.pt; both carry T, the sample shape, the data transform and the per-step
// coefficients (attributes T, sample_shape, center, scale, clamp_output, value_lo, value_hi; buffers step.a,
// step.b, step.sigma), a `denoise(x_t, t)` method (t: 1-based int64 steps, shape (batch,)), and the few-step plans
// (attributes plan_names "SAMPLER:STEPS", plan_timesteps, plan_rows, plan_clip, plan_history, default_sampler,
// default_steps, default_plan). --sampler/--steps are pyddpm-sample's flags (--steps alone: the export's default
// sampler; --sampler alone: its default steps; neither: its default plan; --sampler ddpm: Algorithm 2). The network runs in libtorch; x_T, every z and the
// update run in pyddpm's fused CPU kernel with its in-kernel Philox noise (csrc/): Algorithm 2's
// x_{t-1} = (a_t x_t + b_t eps_hat) + sigma_t z, or a plan's row with its K history buffers, as
// `pyddpm-sample RUN --seed S` does, so the same seed gives the same samples. Output: float32 .npy in data space
// (x / scale + center, clamped for images). MODEL.pt must match the SHA-256 that manifest.json beside it records;
// a modified file is refused.
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "reverse_step.h"
#include "sha256.h"

namespace {

constexpr const char* kUsage =
    "usage: pyddpm-sampler-cpp MODEL.pt [--num N] [--seed S] [--out FILE.npy] [--sampler NAME] [--steps N]\n"
    "                          [--batch-size B] [--threads K]\n"
    "  MODEL.pt      sampler.pt or denoiser.pt written by pyddpm-export\n"
    "  --num N       number of samples (default 1000)\n"
    "  --seed S      noise seed in [0, 2^63); sample i depends only on (seed, i) (default 0)\n"
    "  --out FILE    output .npy, data space as pyddpm-sample writes it (default samples.npy)\n"
    "  --sampler S   few-step sampler, as pyddpm-sample's: one the export carries (ddpm: Algorithm 2)\n"
    "                (default: the export's)\n"
    "  --steps N     its number of network calls, as pyddpm-sample's; alone: the export's default sampler\n"
    "  --batch-size  samples per batch (default 10000)\n"
    "  --threads K   CPU threads for libtorch and the kernel (default: their choice)\n";

struct Options {
  std::string model, out = "samples.npy", sampler;  // sampler empty: not given
  int64_t num = 1000, batch_size = 10000, steps = 0;  // steps 0: not given
  uint64_t seed = 0;
  int threads = 0;
};

struct Model {
  torch::jit::Module module;
  int64_t T = 0;
  std::vector<int64_t> shape;
  double center = 0, scale = 1, lo = 0, hi = 0;
  bool clamp = false;
  std::vector<pyddpm::StepCoef> coefs;  // index t - 1
  bool has_plan = false, clip = false;   // has_plan false: Algorithm 2
  int history = 0;                       // the plan's K
  torch::Tensor timesteps, rows;         // the plan's t_i (int64) and rows (float32, N x 11)
};

constexpr const char* kAlgorithm2 = "ddpm";  // with all T steps: Algorithm 2, not a few-step plan

int64_t parse_int(const std::string& flag, const std::string& value, int64_t lo, int64_t hi) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || used == 0 || v < lo || v > hi)
    throw std::invalid_argument(flag + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                "], got '" + value + "'");
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) {
      if (!o.model.empty()) throw std::invalid_argument("more than one model given: '" + arg + "'");
      o.model = arg;
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
    const std::string value = argv[++i];
    if (arg == "--num") o.num = parse_int(arg, value, 1, INT64_MAX / 2);
    else if (arg == "--seed") o.seed = static_cast<uint64_t>(parse_int(arg, value, 0, INT64_MAX));
    else if (arg == "--out") o.out = value;
    else if (arg == "--sampler") o.sampler = value;
    else if (arg == "--steps") o.steps = parse_int(arg, value, 1, INT64_MAX);
    else if (arg == "--batch-size") o.batch_size = parse_int(arg, value, 1, INT64_MAX / 2);
    else if (arg == "--threads") o.threads = static_cast<int>(parse_int(arg, value, 0, 1024));
    else throw std::invalid_argument("unknown option " + arg + "\n" + kUsage);
  }
  if (o.model.empty()) throw std::invalid_argument(std::string("no model given\n") + kUsage);
  if (o.out.size() < 4 || o.out.substr(o.out.size() - 4) != ".npy")
    throw std::invalid_argument("--out must end in .npy, got '" + o.out + "'");
  return o;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << f.rdbuf();
  return bytes.str();
}

// The SHA-256 manifest.json records for the file `name`: the first "sha256" after the key "name" under "files"
// (pyddpm-export writes each file's entry with its sha256 last); empty when there is none.
std::string manifest_sha256(const std::string& manifest, const std::string& name) {
  const size_t files = manifest.find("\"files\"");
  const size_t entry = files == std::string::npos ? files : manifest.find("\"" + name + "\"", files);
  const size_t key = entry == std::string::npos ? entry : manifest.find("\"sha256\"", entry);
  const size_t open = key == std::string::npos ? key : manifest.find('"', manifest.find(':', key));
  const size_t close = open == std::string::npos ? open : manifest.find('"', open + 1);
  return close == std::string::npos ? "" : manifest.substr(open + 1, close - open - 1);
}

// The bytes of `path` after checking them against the SHA-256 in the manifest.json beside it.
std::string verified_bytes(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (!std::ifstream(dir + "/manifest.json"))
    throw std::runtime_error(dir + " holds no manifest.json, so " + name + " is not a pyddpm export (or predates the "
                             "manifest); export a trained run with `pyddpm-export RUN_DIR --out DIR`");
  const std::string expected = manifest_sha256(read_file(dir + "/manifest.json"), name);
  if (expected.empty())
    throw std::runtime_error(name + " is not listed in " + dir + "/manifest.json; pass a file pyddpm-export wrote");
  std::string bytes = read_file(path);
  const std::string digest = pyddpm::sha256_hex(bytes);
  if (digest != expected)
    throw std::runtime_error(name + " does not match its SHA-256 in manifest.json (modified or corrupted since the "
                             "export: " + digest + ", expected " + expected + "); refusing to load it, export again");
  return bytes;
}

// "SAMPLER:STEPS", the key of a plan in the module's plan_names.
std::string plan_key(const std::string& sampler, int64_t steps) { return sampler + ":" + std::to_string(steps); }

// Picks the plan for pyddpm-sample's --sampler/--steps (the rule of the manifest's "solvers"), or Algorithm 2.
void choose_plan(Model& m, const std::string& path, std::string sampler, int64_t steps) {
  if (steps != 0 && steps > m.T)
    throw std::invalid_argument("--steps must be in [1, T = " + std::to_string(m.T) + "], got " + std::to_string(steps));
  const bool plans = m.module.hasattr("plan_names");
  auto algorithm_2 = [&](const std::string& name, int64_t n) { return name == kAlgorithm2 && (n == 0 || n == m.T); };
  if (!plans) {  // an export that predates the few-step plans
    if (algorithm_2(sampler.empty() ? kAlgorithm2 : sampler, steps)) return;
    throw std::invalid_argument(path + " carries no few-step plans (it predates them): re-export the run with "
                                "`pyddpm-export RUN --out DIR --sampler NAME --steps N`, or leave out --sampler/--steps");
  }
  if (sampler.empty() && steps == 0) {
    const std::string key = m.module.attr("default_plan").toStringRef();
    sampler = key.substr(0, key.rfind(':'));
    steps = std::stoll(key.substr(key.rfind(':') + 1));
  } else if (sampler.empty()) {
    sampler = m.module.attr("default_sampler").toStringRef();
  }
  if (algorithm_2(sampler, steps)) return;
  if (steps == 0) steps = m.module.attr("default_steps").toInt();  // a sampler alone: pyddpm-sample's default
  const auto names = m.module.attr("plan_names").toListRef();
  std::string carried = kAlgorithm2, calls;
  for (size_t k = 0; k < names.size(); ++k) {
    const std::string key = names[k].toStringRef();
    const std::string name = key.substr(0, key.rfind(':'));
    if (key == plan_key(sampler, steps)) {
      m.has_plan = true;
      m.timesteps = m.module.attr("plan_timesteps").toListRef()[k].toTensor().to(torch::kInt64).contiguous();
      m.rows = m.module.attr("plan_rows").toListRef()[k].toTensor().to(torch::kFloat32).contiguous();
      m.clip = m.module.attr("plan_clip").toListRef()[k].toBool();
      m.history = static_cast<int>(m.module.attr("plan_history").toListRef()[k].toInt());
      if (m.rows.dim() != 2 || m.rows.size(0) != steps || m.rows.size(1) != pyddpm::kRowWidth ||
          m.timesteps.numel() != steps || m.history < 0 || m.history > pyddpm::kMaxHistory ||
          m.timesteps.min().item<int64_t>() < 1 || m.timesteps.max().item<int64_t>() > m.T ||
          !torch::isfinite(m.rows).all().item<bool>() || (m.rows.select(1, 2) < 0).any().item<bool>())
        throw std::runtime_error(path + ": the plan " + key + " needs that many time steps in [1, T] and rows of 11 "
                                 "finite coefficients with sigma >= 0");
      return;
    }
    if (name == sampler) calls += (calls.empty() ? "" : ", ") + key.substr(key.rfind(':') + 1);
    if (carried.find(name) == std::string::npos) carried += ", " + name;
  }
  if (calls.empty() && sampler != kAlgorithm2)
    throw std::invalid_argument("unknown --sampler '" + sampler + "': this export carries " + carried);
  throw std::invalid_argument("this export carries --sampler " + sampler + " at --steps " +
                              (calls.empty() ? std::to_string(m.T) : calls) + ", not " + std::to_string(steps) +
                              ": re-export the run with `pyddpm-export RUN --out DIR --sampler " + sampler +
                              " --steps " + std::to_string(steps) + "`");
}

Model load_model(const std::string& path) {
  Model m;
  if (!std::ifstream(path))
    throw std::runtime_error(path + " does not exist; export a run with `pyddpm-export RUN_DIR --out DIR`");
  std::istringstream bytes(verified_bytes(path));
  try {
    m.module = torch::jit::load(bytes, torch::kCPU);
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + " cannot be loaded as TorchScript (" + e.what_without_backtrace() +
                             "); pass the sampler.pt or denoiser.pt written by pyddpm-export");
  }
  for (const char* name : {"T", "sample_shape", "center", "scale", "clamp_output", "value_lo", "value_hi", "step"})
    if (!m.module.hasattr(name))
      throw std::runtime_error(path + " is not a pyddpm export (it has no attribute '" + name +
                               "'); export a trained run with `pyddpm-export RUN_DIR --out DIR`");
  if (!m.module.find_method("denoise"))
    throw std::runtime_error(path + " is not a pyddpm export (it has no denoise method)");
  m.T = m.module.attr("T").toInt();
  m.shape = m.module.attr("sample_shape").toIntVector();
  m.center = m.module.attr("center").toDouble();
  m.scale = m.module.attr("scale").toDouble();
  m.clamp = m.module.attr("clamp_output").toBool();
  m.lo = m.module.attr("value_lo").toDouble();
  m.hi = m.module.attr("value_hi").toDouble();
  const auto step = m.module.attr("step").toModule();
  std::vector<torch::Tensor> table;
  for (const char* name : {"a", "b", "sigma"}) {
    auto v = step.attr(name).toTensor().to(torch::kFloat32).contiguous();
    if (v.dim() != 1 || v.size(0) != m.T)
      throw std::runtime_error(path + ": step." + name + " must have T = " + std::to_string(m.T) + " entries");
    table.push_back(v);
  }
  for (int64_t i = 0; i < m.T; ++i) {
    pyddpm::StepCoef c;
    c.a = table[0][i].item<float>();
    c.b = table[1][i].item<float>();
    c.sigma = table[2][i].item<float>();
    m.coefs.push_back(c);
  }
  return m;
}

// The network's eps_hat for x at the 1-based step t, checked to be float32 of x's shape.
torch::Tensor denoise(torch::jit::Method& method, const torch::Tensor& x, int64_t t) {
  torch::Tensor eps = method({x, torch::full({x.size(0)}, t, torch::kInt64)}).toTensor();
  if (eps.sizes() != x.sizes() || eps.scalar_type() != torch::kFloat32)
    throw std::runtime_error("the model's denoise returned " + std::string(c10::toString(eps.scalar_type())) +
                             " of shape " + c10::str(eps.sizes()) + " for x_t of shape " + c10::str(x.sizes()));
  return eps.contiguous();
}

// x_0 in data space for samples [start, start + batch): Algorithm 2, or the plan's calls (its rows and K history
// buffers), with the fused kernel and its Philox noise (z of the call at t drawn at step t where sigma != 0).
torch::Tensor sample_batch(Model& m, int64_t batch, int64_t start, uint64_t seed, int threads) {
  std::vector<int64_t> sizes{batch};
  sizes.insert(sizes.end(), m.shape.begin(), m.shape.end());
  torch::Tensor x = torch::empty(sizes, torch::kFloat32);
  const int64_t n = x.numel() / batch;
  const uint64_t offset = static_cast<uint64_t>(start);
  pyddpm::normal_cpu(x.data_ptr<float>(), batch, n, {seed, 0, offset}, threads);  // x_T: step 0 (Alg. 2 line 1)
  auto method = m.module.get_method("denoise");
  if (m.has_plan) {
    std::vector<torch::Tensor> buffers;
    pyddpm::History history;
    for (int k = 0; k < m.history; ++k) {
      buffers.push_back(torch::zeros(sizes, torch::kFloat32));
      history.p[k] = buffers.back().data_ptr<float>();
    }
    history.count = m.history;
    for (int64_t i = 0; i < m.timesteps.numel(); ++i) {
      const int64_t t = m.timesteps[i].item<int64_t>();
      torch::Tensor eps = denoise(method, x, t);
      const pyddpm::StepCoef coef = pyddpm::schedule_row(m.rows[i].data_ptr<float>(), m.clip);
      const pyddpm::PhiloxArgs rng{seed, static_cast<uint32_t>(t), offset};
      pyddpm::reverse_step_cpu(x.data_ptr<float>(), x.data_ptr<float>(), eps.data_ptr<float>(), nullptr, batch, n,
                               coef, rng, threads, history);  // in place, the history shifted
    }
  } else {
    for (int64_t t = m.T; t >= 1; --t) {
      torch::Tensor eps = denoise(method, x, t);
      const pyddpm::PhiloxArgs rng{seed, static_cast<uint32_t>(t), offset};  // z of step t
      pyddpm::reverse_step_cpu(x.data_ptr<float>(), x.data_ptr<float>(), eps.data_ptr<float>(), nullptr, batch, n,
                               m.coefs[t - 1], rng, threads);  // Alg. 2 line 4, in place
    }
  }
  torch::Tensor data = x / m.scale + m.center;
  return m.clamp ? data.clamp(m.lo, m.hi) : data;
}

void write_npy(const std::string& path, const torch::Tensor& samples) {
  std::string shape = "(";
  for (int64_t d : samples.sizes()) shape += std::to_string(d) + ", ";
  if (samples.dim() > 1) shape.resize(shape.size() - 2);
  shape += ")";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  header.append(63 - (10 + header.size()) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot write " + path);
  const uint16_t len = static_cast<uint16_t>(header.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.put(static_cast<char>(len & 0xff)).put(static_cast<char>(len >> 8));
  f << header;
  f.write(reinterpret_cast<const char*>(samples.data_ptr<float>()), samples.numel() * sizeof(float));
  if (!f) throw std::runtime_error("writing " + path + " failed");
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse_args(argc, argv);
    if (o.threads > 0) at::set_num_threads(o.threads);
    c10::InferenceMode guard;
    Model m = load_model(o.model);
    choose_plan(m, o.model, o.sampler, o.steps);
    const auto begin = std::chrono::steady_clock::now();
    std::vector<torch::Tensor> parts;
    for (int64_t start = 0; start < o.num; start += o.batch_size)
      parts.push_back(sample_batch(m, std::min(o.batch_size, o.num - start), start, o.seed, o.threads));
    const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - begin;
    write_npy(o.out, torch::cat(parts).contiguous());
    std::cout << "wrote " << o.num << " samples to " << o.out << " (sampling " << seconds.count() << " s)\n";
  } catch (const std::exception& e) {
    std::cerr << "pyddpm-sampler-cpp: error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}

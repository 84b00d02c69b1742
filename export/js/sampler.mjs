// Sample a pyddpm model exported to ONNX, in Node.js (onnxruntime-node) or a browser (onnxruntime-web).
//
//   import * as ort from "onnxruntime-node";            // or "onnxruntime-web"
//   import { Sampler, urlSource } from "./sampler.mjs";
//   const sampler = await Sampler.load(urlSource("https://host/exported/"), ort);
//   const { samples, shape } = await sampler.sample(1000, 0n, { onStep: ({ t, x }) => draw(sampler.toData(x)) });
//
// Reads the export's manifest.json (pyddpm/export/manifest.py) for T, the sample shape, the few-step plans and the
// map to data space, checks the graph it runs against the SHA-256 the manifest records (a modified file is refused
// by name), and runs either a few-step plan with solver_step.onnx (pyddpm-sample's --sampler/--steps, passed to
// load as {sampler, steps}; neither: the export's default plan) or Algorithm 2 of Ho et al. (2020) with step.onnx:
// x_T ~ N(0, I), then x_{t-1} = step(x_t, t, z) for t = T..1. x_T and every z are drawn with pyddpm's
// counter-based noise rule (Philox4x32-10 + Box-Muller, pyddpm/philox.py), every float operation rounded to
// binary32 as the spec demands, so a seed gives the samples `pyddpm-sample --seed` gives.
// Uses only ECMAScript and Web APIs (fetch, crypto.subtle), which Node.js 20 and browsers both provide.

export const EXPORT_FORMAT = "1";
export const NOISE_RULE = "pyddpm-philox4x32-10-boxmuller-1";
export const MANIFEST = "manifest.json";
export const ALGORITHM_2 = "ddpm"; // with all T steps: step.onnx, not a few-step plan
const ROW = 11, HISTORY = 3; // a plan's coefficients per call; the history buffers solver_step.onnx carries

/** A file or manifest that is not a usable pyddpm export, or bad arguments. */
export class SamplerError extends Error {
  constructor(message) {
    super(message);
    this.name = "SamplerError";
  }
}

// ---- pyddpm's noise rule (pyddpm/philox.py) ----------------------------------------------------------------
const M0 = 0xd2511f53, M1 = 0xcd9e8d57, W0 = 0x9e3779b9, W1 = 0xbb67ae85;
const fround = Math.fround;

/** A binary32 constant written as a C99 hex float ("0x1.63p-1"), exactly as pyddpm/philox.py states it. */
function hexFloat(text) {
  const match = /^(-?)0x([0-9a-f])\.([0-9a-f]*)p([+-]?\d+)$/i.exec(text);
  const digits = match[2] + match[3];
  const value = parseInt(digits, 16) * 2 ** (Number(match[4]) - 4 * match[3].length);
  return fround(match[1] ? -value : value);
}

const LN2_HI = hexFloat("0x1.63p-1");
const LN2_LO = hexFloat("-0x1.bd0106p-13");
const LOG_POLY = ["0x1.555554p-2", "-0x1.000226p-2", "0x1.99a008p-3", "-0x1.547244p-3",
  "0x1.22da1cp-3", "-0x1.0d8544p-3", "0x1.055b72p-3", "-0x1.38b582p-4"].map(hexFloat);
const SIN_POLY = ["0x1.921fb6p+0", "-0x1.4abbbap-1", "0x1.465ec6p-4", "-0x1.2d9bb6p-8"].map(hexFloat);
const COS_POLY = ["-0x1.3bd3ccp+0", "0x1.03c1dep-2", "-0x1.55c5ep-6", "0x1.d9d57ep-11"].map(hexFloat);

/** The high 32 bits of m * c for u32 m and c: 16-bit halves keep every partial product exact in a double. */
function mulhi(m, c) {
  const mHi = m >>> 16, mLo = m & 0xffff, cHi = c >>> 16, cLo = c & 0xffff;
  const mid = cHi * mLo + cLo * mHi; // < 2**33
  const low = cLo * mLo + (mid % 65536) * 65536; // < 2**33
  return cHi * mHi + Math.floor(mid / 65536) + Math.floor(low / 4294967296);
}

/** Philox4x32-10 of counter (c0, c1, c2, c3) and key (k0, k1), all u32 numbers; writes the 4 words to out. */
export function philox4x32_10(c0, c1, c2, c3, k0, k1, out = new Uint32Array(4)) {
  for (let r = 0; r < 10; r++) {
    if (r) {
      k0 = (k0 + W0) >>> 0;
      k1 = (k1 + W1) >>> 0;
    }
    const hi0 = mulhi(M0, c0), lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi(M1, c2), lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
  return out;
}

const bitsF32 = new Float32Array(1), bitsU32 = new Uint32Array(bitsF32.buffer);

/** ln u1 (binary32) for u1 = ((ra >> 8) + 1) 2**-24: the spec's exact reduction, then its polynomial. A double
 *  holds each exact binary32 product or sum, so fround of it is the correctly rounded binary32 operation. */
function logUniform(ra) {
  bitsF32[0] = ((ra >>> 8) + 1) * 2 ** -24; // exact
  const bits = bitsU32[0];
  const big = (bits & 0x7fffff) > 0x3504f3;
  bitsU32[0] = (bits & 0x7fffff) | (big ? 0x3f000000 : 0x3f800000);
  const f = bitsF32[0];
  const e = (bits >>> 23) - (big ? 126 : 127);
  const x = fround(f - 1), z = fround(x * x);
  let p = LOG_POLY[7];
  for (let k = 6; k >= 0; k--) p = fround(fround(p * x) + LOG_POLY[k]);
  let y = fround(fround(x * z) * p);
  y = fround(y + fround(e * LN2_LO));
  y = fround(y - fround(0.5 * z));
  return fround(fround(x + y) + fround(e * LN2_HI));
}

/** Box-Muller (rho cos, rho sin) in binary32 from two u32 words, as pyddpm/philox.py's normal_pair. */
export function normalPair(ra, rb) {
  const rho = fround(Math.sqrt(fround(-2 * logUniform(ra)))); // sqrt of a double, rounded once: correctly rounded
  const k = rb >>> 8;
  const q = (k + 0x200000) >> 22;
  const x = fround((k - q * 4194304) * 2 ** -22), z = fround(x * x);
  let s = SIN_POLY[3], c = COS_POLY[3];
  for (let j = 2; j >= 0; j--) {
    s = fround(fround(s * z) + SIN_POLY[j]);
    c = fround(fround(c * z) + COS_POLY[j]);
  }
  s = fround(s * x);
  c = fround(fround(c * z) + 1);
  const odd = q & 1;
  const cosMag = odd ? s : c, sinMag = odd ? c : s;
  const cos = (q ^ (q >> 1)) & 1 ? -cosMag : cosMag;
  const sin = q & 2 ? -sinMag : sinMag;
  return [fround(rho * cos), fround(rho * sin)];
}

function checkedInteger(name, value, limit) {
  let big;
  try {
    big = BigInt(value);
  } catch {
    throw new SamplerError(`${name} must be an integer, got ${value}`);
  }
  if (big < 0n || big >= limit) throw new SamplerError(`${name} must be in [0, ${limit}), got ${value}`);
  return big;
}

/** z ~ N(0, I) for `batch` samples of `size` elements (row-major), float32, exactly as pyddpm's philox_normal:
 *  sample b has global index sampleOffset + b, `step` 0 is x_T and step t the z of the reverse step at t. */
export function philoxNormal(batch, size, seed, step, sampleOffset = 0) {
  const s = checkedInteger("seed", seed, 2n ** 63n);
  const st = Number(checkedInteger("step", step, 2n ** 32n));
  const offset = checkedInteger("sampleOffset", sampleOffset, 2n ** 63n - BigInt(batch) + 1n);
  const k0 = Number(s & 0xffffffffn), k1 = Number(s >> 32n);
  const out = new Float32Array(batch * size), words = new Uint32Array(4);
  for (let b = 0; b < batch; b++) {
    const i = offset + BigInt(b);
    const i0 = Number(i & 0xffffffffn), i1 = Number(i >> 32n);
    for (let g = 0, e = 0; e < size; g++, e += 4) {
      philox4x32_10(g, i0, i1, st, k0, k1, words);
      const [n0, n1] = normalPair(words[0], words[1]);
      const [n2, n3] = normalPair(words[2], words[3]);
      const lanes = [n0, n1, n2, n3], base = b * size + e;
      for (let lane = 0; lane < 4 && e + lane < size; lane++) out[base + lane] = lanes[lane];
    }
  }
  return out;
}

// ---- where the files come from ------------------------------------------------------------------------------
/** Files under a base URL (an http(s) address, or a file: URL in Node.js) read with fetch. */
export function urlSource(base) {
  const root = new URL(base.endsWith("/") ? base : `${base}/`, globalThis.location?.href);
  return {
    where: root.href,
    async read(name) {
      let response;
      try {
        response = await fetch(new URL(name, root));
      } catch (err) {
        throw new SamplerError(`cannot fetch ${name} from ${root.href} (${err.message})`);
      }
      if (!response.ok) throw new SamplerError(`cannot fetch ${name} from ${root.href}: HTTP ${response.status}`);
      return new Uint8Array(await response.arrayBuffer());
    },
  };
}

/** Files picked in a browser (File objects, e.g. an <input type="file" webkitdirectory>), by file name. */
export function fileListSource(files) {
  const byName = new Map([...files].map((file) => [file.name, file]));
  return {
    where: "the picked files",
    async read(name) {
      const file = byName.get(name);
      if (!file) throw new SamplerError(`${name} is not among the picked files; pick the whole export directory`);
      return new Uint8Array(await file.arrayBuffer());
    },
  };
}

/** The hex SHA-256 of bytes, by Web Crypto (Node.js 20; browsers on https or localhost). */
export async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) throw new SamplerError("crypto.subtle is missing: serve the page over https or from localhost");
  const digest = new Uint8Array(await subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- the exported model -------------------------------------------------------------------------------------
function checkManifest(manifest, where) {
  if (manifest?.pyddpm_export !== EXPORT_FORMAT) {
    throw new SamplerError(`${where} describes pyddpm export format ${manifest?.pyddpm_export}; this sampler ` +
      `reads format ${EXPORT_FORMAT}`);
  }
  if (manifest.noise?.rule !== NOISE_RULE) {
    throw new SamplerError(`${where} refers to noise rule ${manifest.noise?.rule}; this sampler implements ` +
      NOISE_RULE);
  }
  const { T, sample_shape: shape, step_coefficients: table, to_data: toData } = manifest;
  if (!Number.isInteger(T) || T < 1 || !Array.isArray(shape) || !shape.every(Number.isInteger) ||
      !(table?.sigma?.length === T) || typeof toData?.divide !== "number" || typeof toData?.add !== "number") {
    throw new SamplerError(`${where}: incomplete or malformed pyddpm manifest`);
  }
}

/** The manifest's few-step plan for pyddpm-sample's flags (sampler, steps; null when not given: the export's
 *  default plan, its default sampler with `steps`, or `sampler` with its default steps), or null for Algorithm 2
 *  (step.onnx). */
export function choosePlan(manifest, sampler = null, steps = null) {
  const { T, solvers } = manifest;
  if (steps !== null && !(Number.isInteger(steps) && steps >= 1 && steps <= T)) {
    throw new SamplerError(`--steps must be an integer in [1, T = ${T}], got ${steps}`);
  }
  const algorithm2 = (name, n) => name === ALGORITHM_2 && (n === null || n === T);
  if (!solvers) { // an export that predates the few-step plans
    if (algorithm2(sampler ?? ALGORITHM_2, steps)) return null;
    throw new SamplerError("this export carries no few-step plans (it predates them): re-export the run with " +
      "`pyddpm-export RUN --out DIR --sampler NAME --steps N`, or leave out --sampler/--steps");
  }
  if (sampler === null && steps === null) ({ sampler, steps } = solvers.default);
  else if (sampler === null) sampler = solvers.default_sampler;
  if (algorithm2(sampler, steps)) return null;
  if (steps === null) steps = solvers.default_steps; // a sampler alone: pyddpm-sample's default number of calls
  const plan = solvers.plans.find((p) => p.sampler === sampler && p.steps === steps);
  if (plan) return plan;
  const carried = [...new Set([...solvers.plans.map((p) => p.sampler), ALGORITHM_2])].sort();
  if (!carried.includes(sampler)) {
    throw new SamplerError(`unknown --sampler ${sampler}: this export carries ${carried.join(", ")}`);
  }
  const calls = solvers.plans.filter((p) => p.sampler === sampler).map((p) => p.steps).sort((a, b) => a - b);
  throw new SamplerError(`this export carries --sampler ${sampler} at --steps ${calls.join(", ") || T}, not ` +
    `${steps}: re-export the run with \`pyddpm-export RUN --out DIR --sampler ${sampler} --steps ${steps}\``);
}

function checkPlan(plan, T, where) {
  const { timesteps, rows } = plan;
  const good = Array.isArray(timesteps) && Array.isArray(rows) && timesteps.length === plan.steps &&
    rows.length === plan.steps && timesteps.every((t) => Number.isInteger(t) && t >= 1 && t <= T) &&
    rows.every((r) => Array.isArray(r) && r.length === ROW && r.every(Number.isFinite) && r[2] >= 0);
  if (!good) {
    throw new SamplerError(`${where}: the plan ${plan.sampler} at ${plan.steps} steps needs that many time steps ` +
      `in [1, T] and rows of ${ROW} finite coefficients with sigma >= 0`);
  }
}

export class Sampler {
  /** The export read from `source` ({read(name) -> Uint8Array}, see urlSource and fileListSource) with `ort`,
   *  the onnxruntime module (onnxruntime-node or onnxruntime-web); `sessionOptions` go to InferenceSession;
   *  `sampler` and `steps` are pyddpm-sample's --sampler/--steps (choosePlan). */
  static async load(source, ort, sessionOptions = {}, { sampler = null, steps = null } = {}) {
    const where = `${MANIFEST} in ${source.where}`;
    let manifest;
    try {
      manifest = JSON.parse(new TextDecoder().decode(await source.read(MANIFEST)));
    } catch (err) {
      throw new SamplerError(`${source.where} holds no readable ${MANIFEST}, so it is not a pyddpm export ` +
        `(${err.message}); export a trained run with \`pyddpm-export RUN_DIR --out DIR\``);
    }
    checkManifest(manifest, where);
    const plan = choosePlan(manifest, sampler, steps);
    if (plan) checkPlan(plan, manifest.T, where);
    const name = plan ? "solver_step.onnx" : "step.onnx";
    const entry = manifest.files?.[name];
    if (!entry?.sha256) throw new SamplerError(`${name} is not listed in ${where}; export with --format onnx`);
    const bytes = await source.read(name);
    const digest = await sha256Hex(bytes);
    if (digest !== entry.sha256) {
      throw new SamplerError(`${name} does not match its SHA-256 in ${MANIFEST} (modified or corrupted since the ` +
        `export: ${digest}, expected ${entry.sha256}); refusing to load it, export again`);
    }
    let session;
    try {
      session = await ort.InferenceSession.create(bytes, sessionOptions);
    } catch (err) {
      throw new SamplerError(`${name} is not a loadable ONNX model (${String(err.message).split("\n")[0]})`);
    }
    const expected = (entry.inputs ?? []).map((input) => input.name);
    if ([...session.inputNames].sort().join() !== [...expected].sort().join()) {
      throw new SamplerError(`${name} has inputs ${session.inputNames}, the manifest lists ${expected}`);
    }
    return new Sampler(manifest, session, ort, plan);
  }

  constructor(manifest, session, ort, plan = null) {
    this.manifest = manifest;
    this.session = session;
    this.ort = ort;
    this.plan = plan;
    this.T = manifest.T;
    this.calls = plan ? plan.steps : manifest.T; // network calls per sample
    this.sampleShape = manifest.sample_shape;
    this.size = manifest.sample_shape.reduce((a, b) => a * b, 1);
    this.outputNames = manifest.files[plan ? "solver_step.onnx" : "step.onnx"].outputs.map((o) => o.name);
    this.outputName = this.outputNames[0];
  }

  /** x_{t-1} = step.onnx(x_t, t, z) for a batch (Alg. 2 line 4), Float32Arrays of count * size values. */
  async step(x, t, z, count) {
    const { Tensor } = this.ort;
    const dims = [count, ...this.sampleShape];
    const feeds = {
      x_t: new Tensor("float32", x, dims),
      t: new Tensor("int64", new BigInt64Array(count).fill(BigInt(t)), [count]),
      z: new Tensor("float32", z, dims),
    };
    const out = (await this.session.run(feeds))[this.outputName];
    if (out.data.length !== x.length) {
      throw new SamplerError(`step.onnx returned ${out.dims} for x_t of shape ${dims}`);
    }
    return out.data;
  }

  /** (x_next, h_next) = solver_step.onnx(x, t, z, h, row, clip) for one call of the plan, Float32Arrays of
   *  count * size (x, z) and count * 3 * size (h) values; `row` the call's 11 coefficients. */
  async solverStep(x, t, z, h, row, count) {
    const { Tensor } = this.ort;
    const dims = [count, ...this.sampleShape];
    const feeds = {
      x: new Tensor("float32", x, dims),
      t: new Tensor("int64", new BigInt64Array(count).fill(BigInt(t)), [count]),
      z: new Tensor("float32", z, dims),
      h: new Tensor("float32", h, [count, HISTORY, ...this.sampleShape]),
      row: new Tensor("float32", Float32Array.from(row), [ROW]),
      clip: new Tensor("bool", Uint8Array.of(this.plan.clip ? 1 : 0), []),
    };
    const out = await this.session.run(feeds);
    const [xNext, hNext] = this.outputNames.map((n) => out[n]);
    if (xNext.data.length !== x.length || hNext.data.length !== h.length) {
      throw new SamplerError(`solver_step.onnx returned ${xNext.dims} for x of shape ${dims}`);
    }
    return [xNext.data, hNext.data];
  }

  /** Model space -> data space as the manifest's numbers say: clamp(x / divide + add), binary32. */
  toData(x) {
    const { divide, add, clamp } = this.manifest.to_data;
    const scale = fround(divide), center = fround(add);
    const out = new Float32Array(x.length);
    for (let k = 0; k < x.length; k++) {
      let v = fround(fround(x[k] / scale) + center);
      if (clamp) v = Math.min(Math.max(v, clamp[0]), clamp[1]);
      out[k] = v;
    }
    return out;
  }

  /** `num` samples in data space by the plan (or Algorithm 2) with pyddpm's noise for `seed` (sample i depends
   *  only on (seed, i)), as {samples: Float32Array, shape}. `onStep({t, T, start, count, x})` is awaited after
   *  every network call with x = x_t of samples start .. start + count - 1 (model space) at the step t it reached
   *  (the plan's next t_i, or t - 1 for Algorithm 2; 0 at the end). */
  async sample(num, seed, { batchSize = 10000, onStep = null } = {}) {
    if (!Number.isInteger(num) || num < 1) throw new SamplerError(`num must be a positive integer, got ${num}`);
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      throw new SamplerError(`batchSize must be a positive integer, got ${batchSize}`);
    }
    checkedInteger("seed", seed, 2n ** 63n);
    const samples = new Float32Array(num * this.size);
    for (let start = 0; start < num; start += batchSize) {
      const count = Math.min(batchSize, num - start);
      let x = philoxNormal(count, this.size, seed, 0, start); // x_T (Alg. 2 line 1)
      if (this.plan) {
        const { timesteps, rows } = this.plan;
        let h = new Float32Array(count * HISTORY * this.size);
        for (let i = 0; i < timesteps.length; i++) {
          // the z of call i at Philox step t_i, drawn only where sigma != 0
          const z = rows[i][2] !== 0 ? philoxNormal(count, this.size, seed, timesteps[i], start) : new Float32Array(x.length);
          [x, h] = await this.solverStep(x, timesteps[i], z, h, rows[i], count);
          if (onStep) await onStep({ t: timesteps[i + 1] ?? 0, T: this.T, start, count, x });
        }
        samples.set(this.toData(x), start * this.size);
        continue;
      }
      for (let t = this.T; t >= 1; t--) {
        // sigma_1 = 0, so z is not read at t = 1 (the manifest's z_read_at_t_1): zeros, as pyddpm passes
        const z = t > 1 ? philoxNormal(count, this.size, seed, t, start) : new Float32Array(x.length);
        x = await this.step(x, t, z, count);
        if (onStep) await onStep({ t: t - 1, T: this.T, start, count, x });
      }
      samples.set(this.toData(x), start * this.size);
    }
    return { samples, shape: [num, ...this.sampleShape] };
  }
}

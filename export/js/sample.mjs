#!/usr/bin/env node
// Sample a pyddpm model exported to ONNX with Node.js and onnxruntime-node (no Python).
//
//   node export/js/sample.mjs EXPORT_DIR --num 1000 --seed 0 --out samples.npy [--sampler NAME] [--steps N]
//        [--batch-size N] [--threads N] [--time]
//
// EXPORT_DIR is what `pyddpm-export RUN --out EXPORT_DIR` wrote (manifest.json and solver_step.onnx or step.onnx
// are read; the graph must match its SHA-256 in the manifest). --sampler/--steps are pyddpm-sample's flags, so the
// same seed and flags give the samples `pyddpm-sample RUN --seed S` gives. Writes data-space samples as .npy
// (float32) or .json ({"shape": [...], "samples": [flat, row-major]}). --time prints the milliseconds per network
// call (noise + the graph), the median over all calls run.
import { readFile, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";

import * as ort from "onnxruntime-node";

import { Sampler, SamplerError } from "./sampler.mjs";

const USAGE = `usage: sample.mjs EXPORT_DIR [--num N] [--seed S] [--out FILE] [--sampler NAME] [--steps N] [--batch-size N] [--threads N] [--time]

Sample a pyddpm model exported to ONNX with Node.js and onnxruntime-node.

  EXPORT_DIR      directory pyddpm-export wrote (manifest.json, solver_step.onnx, step.onnx)
  --num N         number of samples (default 1000)
  --seed S        noise seed in [0, 2**63); sample i depends only on (seed, i) (default 0)
  --sampler NAME  few-step sampler, as pyddpm-sample's: one the export carries (ddpm: Algorithm 2) (default: the export's)
  --steps N       its number of network calls, as pyddpm-sample's; alone: the export's default sampler
  --out FILE      output: .npy (float32, data space) or .json (default samples.npy)
  --batch-size N  samples per batch (default 10000)
  --threads N     onnxruntime intra-op threads (default 0: its choice)
  --time          print the milliseconds per network call (median over all calls)`;

/** Files of a local directory, read with node:fs. */
export function directorySource(dir) {
  return {
    where: resolve(dir),
    async read(name) {
      try {
        return new Uint8Array(await readFile(join(dir, name)));
      } catch (err) {
        throw new SamplerError(`cannot read ${join(dir, name)} (${err.code ?? err.message})`);
      }
    },
  };
}

/** A .npy file (format 1.0, little-endian float32, C order) of `data` with `shape`. */
function npyBytes(data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n"; // total header length a multiple of 64
  const head = new Uint8Array(10 + header.length);
  head.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(head.buffer).setUint16(8, header.length, true);
  head.set(new TextEncoder().encode(header), 10);
  const body = new Uint8Array(data.length * 4);
  const view = new DataView(body.buffer);
  data.forEach((v, k) => view.setFloat32(4 * k, v, true));
  return Buffer.concat([head, body]);
}

function positiveInteger(flag, text) {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new SamplerError(`${flag} must be a positive integer, got ${text}`);
  return value;
}

async function main(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv, allowPositionals: true, options: {
        num: { type: "string", default: "1000" }, seed: { type: "string", default: "0" },
        out: { type: "string", default: "samples.npy" }, "batch-size": { type: "string", default: "10000" },
        threads: { type: "string", default: "0" }, time: { type: "boolean", default: false },
        sampler: { type: "string" }, steps: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (err) {
    throw new SamplerError(`${err.message}\n${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length !== 1) throw new SamplerError(`expected one EXPORT_DIR, got ${positionals.length}\n${USAGE}`);
  const num = positiveInteger("--num", values.num), batchSize = positiveInteger("--batch-size", values["batch-size"]);
  const threads = Number(values.threads);
  if (!Number.isInteger(threads) || threads < 0) throw new SamplerError(`--threads must be >= 0, got ${values.threads}`);
  if (!/^\d+$/.test(values.seed) || BigInt(values.seed) >= 2n ** 63n) {
    throw new SamplerError(`--seed must be in [0, 2**63), got ${values.seed}`);
  }
  const out = values.out;
  if (!/\.(npy|json)$/i.test(out)) throw new SamplerError(`--out must end in .npy or .json, got ${out}`);

  const steps = values.steps === undefined ? null : Number(values.steps);
  if (steps !== null && !(/^\d+$/.test(values.steps) && steps >= 1)) {
    throw new SamplerError(`--steps must be a positive integer, got ${values.steps}`);
  }
  const sampler = await Sampler.load(directorySource(positionals[0]), ort, { intraOpNumThreads: threads },
    { sampler: values.sampler ?? null, steps });
  const stepMs = [];
  let last = performance.now();
  const onStep = values.time ? () => {
    const now = performance.now();
    stepMs.push(now - last);
    last = now;
  } : null;
  const { samples, shape } = await sampler.sample(num, BigInt(values.seed), { batchSize, onStep });
  if (/\.npy$/i.test(out)) {
    await writeFile(out, npyBytes(samples, shape));
  } else {
    await writeFile(out, JSON.stringify({ shape, samples: Array.from(samples) }));
  }
  console.log(`wrote ${num} samples to ${out}`);
  if (values.time) {
    const sorted = [...stepMs].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)];
    console.log(`ms/step ${median.toFixed(3)} (median of ${sorted.length} network calls at batch ${Math.min(batchSize, num)})`);
  }
}

main(process.argv.slice(2)).catch((err) => {
  if (!(err instanceof SamplerError)) throw err;
  console.error(`sample.mjs: error: ${err.message}`);
  process.exitCode = 2;
});

// The demo page: samples an exported pyddpm model with onnxruntime-web and draws x_t after every network call
// (point data as a scatter plot, images as a grid), by a few-step plan (sampler and network calls, as
// pyddpm-sample's --sampler/--steps) or Algorithm 2 (sampler ddpm). The state is exposed as window.pyddpmDemo:
// {state: "idle" | "loading" | "sampling" | "done" | "error", message, t, T, calls, sampler, shape, samples (data
// space, flat, once done), msPerStep (sampling time without drawing, per network call)}.
import * as ort from "onnxruntime-web";

import { Sampler, fileListSource, urlSource } from "../sampler.mjs";

ort.env.wasm.wasmPaths = new URL("../node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page; a plain static server is not one

const $ = (id) => document.getElementById(id);
const canvas = $("canvas"), ctx = canvas.getContext("2d");
const demo = { state: "idle", message: "", t: null, T: null, shape: null, samples: null, msPerStep: null };
window.pyddpmDemo = demo;

function report(state, message) {
  Object.assign(demo, { state, message });
  $("status").textContent = message;
  $("status").className = state === "error" ? "error" : "";
}

/** The points (data space, pairs) on the canvas: a square view that grows to hold the central 99% so far. */
function drawPoints(points, view) {
  const xs = [], ys = [];
  for (let k = 0; k + 1 < points.length; k += 2) {
    if (Number.isFinite(points[k]) && Number.isFinite(points[k + 1])) xs.push(points[k]), ys.push(points[k + 1]);
  }
  const quantile = (a, q) => Float64Array.from(a).sort()[Math.min(a.length - 1, Math.floor(q * a.length))];
  const lo = Math.min(quantile(xs, 0.005), quantile(ys, 0.005)), hi = Math.max(quantile(xs, 0.995), quantile(ys, 0.995));
  const pad = 0.05 * (hi - lo || 1);
  view.lo = Math.min(view.lo, lo - pad);
  view.hi = Math.max(view.hi, hi + pad);
  const scale = canvas.width / (view.hi - view.lo);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "rgba(20, 60, 160, 0.45)";
  for (let k = 0; k < xs.length; k++) {
    ctx.fillRect((xs[k] - view.lo) * scale - 1, canvas.height - (ys[k] - view.lo) * scale - 1, 2, 2);
  }
}

/** Images (data space) as a grid with 2-pixel white borders, pixels by the manifest's mapping, as pyddpm-sample
 *  draws its grids. */
function drawImages(images, count, pixels) {
  const [channels, h, w] = pixels.image_shape, size = channels * h * w;
  const nrow = Math.ceil(Math.sqrt(count)), rows = Math.ceil(count / nrow);
  const width = nrow * (w + 2) + 2, height = rows * (h + 2) + 2;
  const image = new ImageData(width, height);
  image.data.fill(255);
  const toPixel = (v) => {
    const p = pixels.round ? Math.round(v * pixels.multiply) : v * pixels.multiply;
    return Math.min(Math.max(p, pixels.clamp[0]), pixels.clamp[1]);
  };
  for (let n = 0; n < count; n++) {
    const top = 2 + Math.floor(n / nrow) * (h + 2), left = 2 + (n % nrow) * (w + 2);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const at = 4 * ((top + y) * width + left + x);
        for (let c = 0; c < 3; c++) image.data[at + c] = toPixel(images[n * size + (c % channels) * h * w + y * w + x]);
      }
    }
  }
  const grid = new OffscreenCanvas(width, height);
  grid.getContext("2d").putImageData(image, 0, 0);
  const scale = Math.max(1, Math.floor(Math.min(canvas.width / width, canvas.height / height)));
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(grid, 0, 0, width * scale, height * scale);
}

async function run(source, num, seed, batchSize, plan) {
  report("loading", `loading ${source.where} ...`);
  Object.assign(demo, { samples: null, shape: null, msPerStep: null, t: null });
  const sampler = await Sampler.load(source, ort, {}, plan);
  const { T, size, manifest, calls } = sampler;
  const method = sampler.plan ? `${sampler.plan.sampler}, ${calls} calls` : `Algorithm 2, ${T} calls`;
  const pixels = manifest.pixels;
  const shown = pixels ? Math.min(num, 64) : num; // a grid of at most 64 images
  const current = new Float32Array(num * size).fill(NaN);
  const view = { lo: Infinity, hi: -Infinity };
  const draw = () => (pixels ? drawImages(sampler.toData(current), shown, pixels) : drawPoints(sampler.toData(current), view));
  Object.assign(demo, { T, calls, sampler: sampler.plan ? sampler.plan.sampler : "ddpm" });
  report("sampling", `sampling ${num} from ${manifest.data} (${method}) ...`);
  let drawing = 0, lastPaint = 0;
  const began = performance.now();
  const { samples, shape } = await sampler.sample(num, BigInt(seed), {
    batchSize,
    onStep: async ({ t, start, x }) => {
      const entered = performance.now();
      current.set(x, start * size);
      demo.t = t;
      if (entered - lastPaint > 30 || t === 0) { // draw at most ~30 times a second, and every batch's end
        draw();
        $("status").textContent = `sampling ${num} from ${manifest.data}: t = ${t} of T = ${T}`;
        await new Promise(requestAnimationFrame);
        lastPaint = performance.now();
      }
      drawing += performance.now() - entered;
    },
  });
  const steps = calls * Math.ceil(num / batchSize);
  Object.assign(demo, { samples: Array.from(samples), shape, msPerStep: (performance.now() - began - drawing) / steps });
  if (pixels) drawImages(samples, shown, pixels);
  else drawPoints(samples, view);
  report("done", `${num} samples from ${manifest.data} (${method}, T = ${T}, seed ${seed}): ` +
    `${demo.msPerStep.toFixed(2)} ms per network call at batch ${Math.min(num, batchSize)}`);
}

function start(source) {
  const num = Number($("num").value), seed = $("seed").value, batch = Number($("batch").value);
  const plan = { sampler: $("sampler").value || null, steps: $("steps").value ? Number($("steps").value) : null };
  run(source, num, seed, batch, plan).catch((err) => report("error", `error: ${err.message}`));
}

const params = new URLSearchParams(location.search);
for (const key of ["num", "seed", "batch", "sampler", "steps"]) if (params.has(key)) $(key).value = params.get(key);
$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  const files = $("picker").files;
  start(files.length ? fileListSource(files) : urlSource(new URL($("model").value, location.href).href));
});
if (params.has("model")) {
  $("model").value = params.get("model");
  start(urlSource(new URL(params.get("model"), location.href).href));
}

# %% [markdown]
# # Learning diffusion with pyddpm
#
# A tour of the DDPM exercise (Ho et al. 2020) with pyddpm: the forward process, Algorithm 1 (training),
# Algorithm 2 (sampling) and its trajectory, the toy fits, and MNIST. It is a percent-format script: run it
# top to bottom with `python docs/tutorial.py`, or open it as a notebook in Jupyter/VS Code (jupytext).
#
# Budgets: `PYDDPM_TUTORIAL_BUDGET=small` (the default) runs in a few minutes on a laptop CPU;
# `PYDDPM_TUTORIAL_BUDGET=tiny` runs in seconds (CI executes it so it cannot rot; its pictures are noise);
# `full` trains as long as the exercise suggests. Pictures go to `PYDDPM_TUTORIAL_OUT` (default
# `tutorial_out/`).
#
# The exercise's own setting, from the command line (the course's flags, network, Adam, no EMA):
#
# ```bash
# pyddpm-exercise train --data cb --model model.pt && pyddpm-exercise sample --data cb --model model.pt
# pyddpm-import model.pt --network fc --data cb --out runs/mine        # your own course checkpoint
# pyddpm-sample runs/mine --trajectory trajectory.gif                  # watch it denoise
# pyddpm-train --data cb                                               # pyddpm's stronger defaults
# ```

# %%
import os
import time
from pathlib import Path

import torch

from pyddpm import DDPM, FcNetwork
from pyddpm.data import Chequerboard, DataTransform, load_images, to_data_space
from pyddpm.evaluate.plots import plot_forward_process, plot_frames, save_image_grid
from pyddpm.evaluate.toy import toy_metrics
from pyddpm.nets import ExerciseUNet
from pyddpm.samplers import generate_samples, plan_for, sample_trajectory, trajectory_steps

BUDGET = os.environ.get("PYDDPM_TUTORIAL_BUDGET", "small")
STEPS = {"tiny": 20, "small": 3000, "full": 20000}[BUDGET]  # optimizer steps per toy fit
MNIST_STEPS = {"tiny": 2, "small": 300, "full": 20000}[BUDGET]
OUT = Path(os.environ.get("PYDDPM_TUTORIAL_OUT", "tutorial_out"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
print(f"budget {BUDGET}: {STEPS} toy steps, {MNIST_STEPS} MNIST steps; pictures in {OUT}/")

# %% [markdown]
# ## 1. The forward process q(x_t | x_0)
#
# The model never sees the data as it is: it sees `(x - 0.5) * scale` (the exercise: scale 2, so [0, 1]
# becomes [-1, 1]). The forward process adds Gaussian noise in T = 1000 small steps with
# beta_t rising linearly from 1e-4 to 0.02; thanks to eq. 4 we can jump to any step at once:
# x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with abar_t = prod_{s<=t} (1 - beta_s). That is `DDPM.q_sample`.

# %%
chequerboard = Chequerboard()
x0 = chequerboard.sample((10000,))  # in data space, like the course's torch.distributions-style ToyData
transform = DataTransform(center=0.5, scale=2.0)  # the exercise's [-1, 1]
model = DDPM(FcNetwork(input_dim=2, num_hidden=64), T=1000)  # the exercise's network and schedule
print("abar_t at t = 1, 250, 500, 1000:", [round(float(model.alpha_cumprod[t - 1]), 4) for t in (1, 250, 500, 1000)])
x_t = model.q_sample(transform.to_model(x0), torch.full((len(x0),), 500), torch.randn_like(x0))
print("std of x_500 per coordinate (model space):", x_t.std(0).tolist())

toy_config = {"data": {"name": "chequerboard", "shape": [2], "center": 0.5, "scale": 2.0},
              "network": {"name": "fc"}}
plot_forward_process(model, x0[:2000], toy_config, OUT / "forward.png", steps=[0, 50, 100, 250, 500, 1000])
print("wrote", OUT / "forward.png")

# %% [markdown]
# By t = T nothing of the data is left: x_T is (almost exactly) N(0, I), which is where sampling starts.
#
# ## 2. Algorithm 1: training
#
# Repeat: take x_0 from the data, t ~ U{1..T}, eps ~ N(0, I), and take a gradient step on
# ||eps - eps_theta(x_t, t)||^2. `model.loss(x)` is the batch mean of exactly that (`model.negative_elbo`
# gives it per example; it is a sum over the D dimensions, so a network that predicts eps = 0 scores D).

# %%
def fit(model, data, steps, batch_size=1000, lr=1e-3, scale=2.0):
    """The exercise's loop: Adam, fresh batches, the mean L_simple (Algorithm 1)."""
    transform = DataTransform(0.5, scale)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    start, losses = time.perf_counter(), []
    for step in range(steps):
        x = transform.to_model(data[torch.randint(len(data), (batch_size,))])
        loss = model.loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"{steps} steps in {time.perf_counter() - start:.1f} s; loss of the last 10%: "
          f"{sum(losses[-max(1, steps // 10):]) / max(1, steps // 10):.3f} (predicting 0 scores {data.shape[1]})")
    return model.eval()


exercise_model = fit(DDPM(FcNetwork(2, 64), T=1000), x0, STEPS)

# %% [markdown]
# ## 3. Algorithm 2: sampling, and the trajectory
#
# Start from x_T ~ N(0, I) and step back: x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t)) /
# sqrt(alpha_t) + sigma_t z, with sigma_t^2 = beta_t and no noise at t = 1. `model.sample` runs it (through
# pyddpm's fused step); with a seed, sample i depends only on (seed, i). The samplers take a
# `callback(t, x_t)`, which `sample_trajectory` uses to keep chosen steps of one run.

# %%
x = exercise_model.sample((5, 2), seed=0)
print("five samples in model space:", x.tolist())
data_config = toy_config["data"]
keep = trajectory_steps(plan_for(exercise_model), 8)
frames = sample_trajectory(exercise_model, data_config, 2000, keep, seed=0)
plot_frames(frames, data_config, OUT / "trajectory.png",
            f"reverse process — chequerboard, exercise network, data scale 2 — Algorithm 2, T = 1000, {STEPS} steps")
print("wrote", OUT / "trajectory.png", "frames at t =", list(frames))

# %% [markdown]
# ## 4. The toy fits: the exercise's network, and what helps
#
# Each fit is scored against the true density: the share of samples inside the squares (truth 1), the mass
# per square (truth 0.2 each), and the energy distance to true samples beside its floor (two true samples).
# The exercise asks whether a different architecture fits the Chequerboard better; pyddpm's default is a
# wider, deeper network with a sinusoidal time embedding, trained on data scale 64 (see the README for
# why the scale matters; docs/RESULTS.md answers the question by measurement).

# %%
def score(model, scale, name):
    config = {"name": "chequerboard", "shape": [2], "center": 0.5, "scale": scale}
    samples = generate_samples(model, config, 2000, seed=1)
    m = toy_metrics(chequerboard, samples, seed=2)
    print(f"{name:28s} inside the squares {m['support_fraction']:.1%}, square mass {min(m['square_mass']):.3f}"
          f"..{max(m['square_mass']):.3f}, energy distance {m['energy_distance']:.2e} "
          f"(floor {m['energy_distance_floor']:.2e})")


score(exercise_model, 2.0, "exercise network, scale 2")
stronger = fit(DDPM(FcNetwork(2, 256, num_layers=4, activation="silu", time_embedding="sinusoidal"), T=1000),
               x0, STEPS, scale=64.0)
score(stronger, 64.0, "256x4 SiLU sinusoidal, 64")

# %% [markdown]
# ## 5. MNIST with the exercise's U-Net
#
# Images are dequantised (x = (pixel + u) / 255, u ~ U(0, 1)) and mapped to [-1, 1]; the U-Net sees the
# flat 784-vector and t. A few hundred steps on a CPU give blobs; the README's figure took 30 epochs. For a
# quick look we sample with DPM-Solver++(2M) (Lu et al. 2022) in 10 network calls instead of all 1000
# (`pyddpm-sample --sampler dpm++2m --steps 10`).

# %%
try:
    images, _ = load_images("mnist", "train", os.environ.get("PYDDPM_MNIST_DIR"))
except ValueError as err:
    images = None
    print("MNIST not found, skipping this part:", err)
if images is not None:
    pixels = images.reshape(len(images), -1)
    unet = DDPM(ExerciseUNet(), T=1000)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    start = time.perf_counter()
    for step in range(MNIST_STEPS):
        batch = DataTransform(0.5, 2.0).to_model(to_data_space(pixels[torch.randint(len(pixels), (64,))]))
        loss = unet.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"{MNIST_STEPS} U-Net steps in {time.perf_counter() - start:.0f} s, last loss {loss.item():.1f} "
          "(a sum over 784 pixels: predicting 0 scores 784)")
    mnist_config = {"name": "mnist", "shape": [784], "center": 0.5, "scale": 2.0, "image_shape": [1, 28, 28],
                    "value_range": [0.0, 1.0]}
    grid = generate_samples(unet.eval(), mnist_config, 16, seed=0, sampler="dpm++2m", steps=10)
    save_image_grid(grid.reshape(-1, 1, 28, 28), OUT / "mnist.png",
                    title=f"mnist, exercise U-Net, data scale 2 — dpm++2m, 10 NFE — after {MNIST_STEPS} steps")
    print("wrote", OUT / "mnist.png")

# %% [markdown]
# ## Where the exercise's questions are answered
#
# - *Implement Algorithms 1 and 2*: `DDPM.negative_elbo` / `DDPM.loss` and `pyddpm.samplers.ddpm_sample`
#   (sections 2 and 3 above); `pyddpm-exercise` runs the course's own script setting.
# - *Does another architecture fit the toy data better?* Section 4, and docs/RESULTS.md (by measurement).
# - *Can a fully connected network learn MNIST, and does the U-Net do better?* docs/RESULTS.md (bits/dim and
#   Frechet distance from `pyddpm-eval`).
# - *sigma_t^2 = beta_t or beta_tilde_t; fewer sampling steps?* docs/RESULTS.md (`--variance`, `--steps`).
# - *Your own model*: `pyddpm-import model.pt --network fc|unet --out RUN`, then `pyddpm-sample RUN
#   --trajectory t.gif`, `pyddpm-eval RUN`, `pyddpm-export RUN --out exported/`.

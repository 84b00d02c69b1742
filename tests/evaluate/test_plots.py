"""Image-grid pictures: the title above a grid is readable whole, however narrow the grid."""
import matplotlib.image
import numpy as np
import pytest
import torch

from pyddpm.evaluate.plots import save_image_grid, titled_grid_figure

LONG = "mnist, unet network, data scale 2 · DDPM (Alg. 2) 1000 steps, sigma^2 = beta · epoch 70"


@pytest.mark.parametrize("width", [62, 242, 900])
def test_a_grid_title_lies_inside_the_picture(width):
    """Before the fix a 242-pixel grid showed "...t network, data scale 2": the title ran off both edges."""
    fig = titled_grid_figure(np.zeros((122, width), dtype=np.uint8), LONG)
    title = fig.texts[0]
    box = title.get_window_extent(fig.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    assert title.get_text().replace("\n", " ") == LONG  # wrapped between words, nothing dropped
    image_top = fig.axes[0].get_window_extent().y1
    assert box.y0 >= image_top - 1  # above the images, not over them


def test_the_saved_grid_keeps_one_pixel_per_pixel(tmp_path):
    images = torch.rand(16, 1, 28, 28)
    save_image_grid(images, tmp_path / "grid.png", nrow=4, title=LONG)
    picture = matplotlib.image.imread(tmp_path / "grid.png")
    untitled = tmp_path / "plain.png"
    save_image_grid(images, untitled, nrow=4)
    plain = matplotlib.image.imread(untitled)
    assert picture.shape[1] == plain.shape[1] and picture.shape[0] > plain.shape[0]

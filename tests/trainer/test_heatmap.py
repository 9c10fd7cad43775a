"""Tests for trainer.heatmap: colours, labels and the pixel font (the image the writer stores
is compared with `render_heatmap` in test_summaries.py)."""

import numpy as np
import pytest

from trainer.heatmap import CONSTRAINT_MAGNITUDE, color_scale, render_heatmap, render_text


def test_render_heatmap_colours():
    values = np.array([[0.0, 2.0], [-2.0, -1e4]])
    image = render_heatmap(values, cell_size=3)
    assert image.shape == (6, 6, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [255, 255, 255]   # 0: white
    assert image[0, 3].tolist() == [178, 24, 43]     # the largest learned value: full red
    assert image[3, 0].tolist() == [33, 102, 172]    # its negative: full blue
    assert image[3, 3].tolist() == [96, 96, 96]      # a constraint: gray, not the scale's end
    half = render_heatmap(np.array([[1.0, 2.0]]), cell_size=1)
    assert half[0, 0].tolist() == [round(255 + 0.5 * (178 - 255)), round(255 + 0.5 * (24 - 255)),
                                   round(255 + 0.5 * (43 - 255))]

    labelled = render_heatmap(values, labels=["O", "B-X"], cell_size=14)
    text_width = render_text("B-X").shape[1]
    assert labelled.shape == (text_width + 8 + 28, text_width + 8 + 28, 3)
    margin = labelled[:text_width + 8, :text_width + 8]
    assert (margin == 255).all()                       # top-left corner: empty
    row_labels = labelled[text_width + 8:, :text_width + 8]
    column_labels = labelled[:text_width + 8, text_width + 8:]
    assert (row_labels == 0).any() and (column_labels == 0).any()
    # The column labels are the row labels turned a quarter.
    assert (row_labels == 0).sum() == (column_labels == 0).sum()
    with pytest.raises(ValueError, match="3 labels for a 2x2"):
        render_heatmap(values, labels=["O", "B", "I"])


def test_render_text_font():
    bitmap = render_text("I-0", scale=1)
    assert bitmap.shape == (5, 12)
    assert ["".join("#" if v else "." for v in row) for row in bitmap] == [
        "###.....###.",
        ".#......#.#.",
        ".#..###.#.#.",
        ".#......#.#.",
        "###.....###.",
    ]
    assert render_text("ab", scale=2).shape == (10, 16)


def test_color_scale_ignores_constraints():
    assert color_scale(np.array([[0.5, -2.0], [-1e4, np.inf]])) == 2.0
    assert color_scale(np.array([CONSTRAINT_MAGNITUDE, np.nan])) == 1.0  # nothing learned
    assert color_scale(np.zeros([2, 2])) == 1.0

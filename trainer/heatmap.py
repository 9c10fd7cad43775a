"""A matrix as a diverging heatmap image, its rows and columns labelled in a 3x5 pixel font.

numpy only: TensorBoard's image summary takes the uint8 array as it is (the writer draws the CRF
transition matrix with it, `SummaryWriter.transitions_image`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Transition scores at least this large in magnitude (or not finite) are constraints, not learned
# values (models.crf uses -1e4 for a forbidden transition); the heatmap shows them in gray so they
# do not flatten the colour scale of the rest.
CONSTRAINT_MAGNITUDE = 1e3

# A 3x5 pixel font for tag names ("#" = ink), drawn as it looks: a line of characters, then their
# glyphs side by side in five lines, one column of space between two glyphs. Upper-case letters,
# digits and a few signs; a space is blank, any other character a filled box.
_FONT_SHEET = """
A   B   C   D   E   F   G   H   I   J   K   L   M   N
.#. ##. .## ##. ### ### .## #.# ### ..# #.# #.. #.# ##.
#.# #.# #.. #.# #.. #.. #.. #.# .#. ..# #.# #.. ### #.#
### ##. #.. #.# ##. ##. #.# ### .#. ..# ##. #.. ### #.#
#.# #.# #.. #.# #.. #.. #.# #.# .#. #.# #.# #.. #.# #.#
#.# ##. .## ##. ### #.. .## #.# ### .#. #.# ### #.# #.#
O   P   Q   R   S   T   U   V   W   X   Y   Z   0   1
.#. ##. .#. ##. .## ### #.# #.# #.# #.# #.# ### ### .#.
#.# #.# #.# #.# #.. .#. #.# #.# #.# #.# #.# ..# #.# ##.
#.# ##. #.# ##. .#. .#. #.# #.# ### .#. .#. .#. #.# .#.
#.# #.. .#. #.# ..# .#. #.# #.# ### #.# .#. #.. #.# .#.
.#. #.. ..# #.# ##. .#. ### .#. #.# #.# .#. ### ### ###
2   3   4   5   6   7   8   9   -   _   .   /
##. ##. #.# ### .## ### ### ### ... ... ... ..#
..# ..# #.# #.. #.. ..# #.# #.# ... ... ... ..#
.#. .#. ### ##. ### .#. ### ### ### ... ... .#.
#.. ..# ..# ..# #.# .#. #.# ..# ... ... ... #..
### ##. ..# ##. ### .#. ### ##. ... ### .#. #..
"""
_GLYPH_W, _GLYPH_H = 3, 5


def _read_font(sheet: str) -> dict[str, np.ndarray]:
    """{character: its glyph, bool [5, 3]} from a font sheet drawn like _FONT_SHEET."""
    lines = sheet.strip("\n").split("\n")
    glyphs = {" ": np.zeros([_GLYPH_H, _GLYPH_W], bool)}
    for top in range(0, len(lines), _GLYPH_H + 1):
        rows = lines[top + 1:top + 1 + _GLYPH_H]
        for i, char in enumerate(lines[top].split()):
            left = i * (_GLYPH_W + 1)
            glyphs[char] = np.array([[c == "#" for c in row[left:left + _GLYPH_W]]
                                     for row in rows], bool)
    return glyphs


_GLYPHS = _read_font(_FONT_SHEET)


def _glyph(char: str) -> np.ndarray:
    """bool [5, 3]; an unknown character is a filled box."""
    glyph = _GLYPHS.get(char.upper())
    return np.ones([_GLYPH_H, _GLYPH_W], bool) if glyph is None else glyph.copy()


def render_text(text: str, *, scale: int = 2) -> np.ndarray:
    """Renders `text` with the built-in 3x5 font (upper-cased; an unknown character is a box).

    Args:
      text: the text, one line.
      scale: pixels per font dot.

    Returns:
      The ink, bool [5 * scale, 4 * scale * len(text)] (a blank column after each glyph).
    """
    if not text:
        return np.zeros([_GLYPH_H * scale, 0], bool)
    spaced = [np.pad(_glyph(c), ((0, 0), (0, 1))) for c in text]  # one column between glyphs
    bitmap = np.concatenate(spaced, axis=1)
    return bitmap.repeat(scale, axis=0).repeat(scale, axis=1)


def color_scale(values: np.ndarray) -> float:
    """The |value| that `render_heatmap` draws in full colour: the largest |value| of `values`
    (float, any shape) that is not a constraint (see CONSTRAINT_MAGNITUDE); 1.0 if none is
    nonzero."""
    learned = values[np.isfinite(values) & (np.abs(values) < CONSTRAINT_MAGNITUDE)]
    peak = float(np.max(np.abs(learned))) if learned.size else 0.0
    return peak if peak > 0 else 1.0


_NEGATIVE = np.array([33, 102, 172], np.float64)   # blue
_POSITIVE = np.array([178, 24, 43], np.float64)    # red
_WHITE = np.array([255, 255, 255], np.float64)
_CONSTRAINT = np.array([96, 96, 96], np.uint8)      # gray


def render_heatmap(values: np.ndarray, *, labels: Sequence[str] | None = None,
                   cell_size: int = 24, font_scale: int = 2) -> np.ndarray:
    """Renders a matrix as a diverging heatmap (blue < 0 < red, white at 0).

    The colour scale is symmetric, full colour at the largest |value| that is not a constraint
    (see CONSTRAINT_MAGNITUDE); constraints are gray. With `labels`, row labels are drawn on the
    left and column labels, rotated, on top.

    Args:
      values: float [rows, cols].
      labels: optional names of the rows (and columns: the matrix is square then).
      cell_size: pixels per cell side.
      font_scale: pixel size of one font dot.

    Returns:
      uint8 [height, width, 3] RGB image.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
        raise ValueError(f"render_heatmap: expected a matrix, got shape {values.shape}")
    rows, cols = values.shape
    constraint = ~np.isfinite(values) | (np.abs(values) >= CONSTRAINT_MAGNITUDE)
    t = np.clip(np.where(constraint, 0.0, values) / color_scale(values), -1.0, 1.0)[..., None]
    colors = np.where(t < 0, _WHITE - t * (_NEGATIVE - _WHITE), _WHITE + t * (_POSITIVE - _WHITE))
    colors = np.round(colors).astype(np.uint8)
    colors[constraint] = _CONSTRAINT
    cells = colors.repeat(cell_size, axis=0).repeat(cell_size, axis=1)  # [rows*cell, cols*cell, 3]

    if not labels:
        return cells
    labels = list(labels)
    if len(labels) != rows or rows != cols:
        raise ValueError(f"render_heatmap: {len(labels)} labels for a {rows}x{cols} matrix")
    margin = 4
    bitmaps = [render_text(label, scale=font_scale) for label in labels]
    label_width = max(b.shape[1] for b in bitmaps) + 2 * margin
    height, width = label_width + rows * cell_size, label_width + cols * cell_size
    image = np.full([height, width, 3], 255, np.uint8)
    image[label_width:, label_width:] = cells
    for i, bitmap in enumerate(bitmaps):
        h, w = bitmap.shape
        # Row label: right-aligned, vertically centred on row i.
        top = label_width + i * cell_size + max((cell_size - h) // 2, 0)
        left = label_width - margin - w
        image[top:top + h, left:left + w][bitmap[:cell_size]] = 0
        # Column label: rotated a quarter turn (reads bottom to top), centred on column i.
        rotated = np.rot90(bitmap)
        rh, rw = rotated.shape
        top = label_width - margin - rh
        left = label_width + i * cell_size + max((cell_size - rw) // 2, 0)
        image[top:top + rh, left:left + rw][rotated[:, :cell_size]] = 0
    return image

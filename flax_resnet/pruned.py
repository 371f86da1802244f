"""The channel counts of timm's pruned ECA-ResNets, as data: what timm reads from its pruning
descriptions (``timm/models/_pruned/ecaresnet50d_pruned.txt`` and ``ecaresnet101d_pruned.txt``,
one shape per tensor; pruning by https://arxiv.org/abs/2002.08258), written here per stage as
(the stage's output width, each block's (conv1, conv2) widths). The stem is unpruned; a
block's conv3, its shortcut and the next block's input are the stage's output width.
``ResNet``'s ``block_widths`` takes them as ``block_widths()`` spells them out.
"""

from __future__ import annotations

Stage = tuple[int, tuple[tuple[int, int], ...]]

ECARESNET50D_PRUNED: tuple[Stage, ...] = (
  (19, ((47, 18), (52, 22), (64, 35))),
  (171, ((85, 37), (107, 80), (120, 85), (125, 87))),
  (818, ((198, 126), (255, 232), (256, 233), (253, 235), (256, 225), (256, 239))),
  (2022, ((492, 237), (512, 500), (512, 490))),
)

# fmt: off
ECARESNET101D_PRUNED: tuple[Stage, ...] = (
  (26, ((45, 25), (53, 20), (60, 27))),
  (142, ((81, 24), (93, 49), (102, 54), (122, 78))),
  (278, (
    (101, 25), (239, 160), (234, 156), (250, 176), (253, 191), (251, 175), (230, 128),
    (244, 154), (244, 159), (238, 97), (244, 149), (253, 181), (245, 119), (255, 216),
    (256, 201), (253, 149), (254, 141), (256, 190), (256, 217), (255, 156), (256, 155),
    (256, 232), (256, 214),
  )),
  (2042, ((499, 289), (512, 512), (512, 502))),
)
# fmt: on


def block_widths(stages: tuple[Stage, ...]) -> tuple[tuple[tuple[int, int, int], ...], ...]:
  """``ResNet``'s ``block_widths`` (per stage, per block, conv1/conv2/conv3 output widths) of
  a pruned net written as above."""
  return tuple(tuple((a, b, out) for a, b in blocks) for out, blocks in stages)

"""Names, defaults and limits that the command line shows while it builds its parser, defined
here without importing torch and imported from here by the modules that use them (each keeps
its own name for them: `similarity.names()`, `images.MAX_PIXELS`, `patterns.DEFAULT_PATTERNS`,
`regions.POINT_MAP_KINDS`)."""

from __future__ import annotations

# Prefix tokens (class, register and distillation tokens) before a transformer layer's patch
# grid (`geometry.token_grid`); the index manifest bounds its explain cache's token count by it.
MAX_PREFIX_TOKENS = 8
# The built-in similarities, in registration order (`simexplain.similarity` checks it).
BUILTIN_SIMILARITIES = ("cosine", "dot", "euclidean")
# The saliency methods, in display order: the names of `methods.METHODS` (which checks it), for
# the benchmarks' `--method` help (simexplain.evaluation.options)
METHOD_NAMES = ("decomposition", "relative", "gradcam", "gradcam-raw", "rgradcam",
                "attention-rollout", "chefer", "gradcam-tokens", "occlusion", "random")
# Point-map kinds (METHOD.md, "Point-map kinds") and the label shown with each (`regions` and
# the benchmarks' point methods use them).
POINT_MAP_KINDS: dict[str, str] = {
    "match-centred": "match: cosine of centred contributions",
    "match": "match: cosine of contributions",
    "contribution": "share of the score",
}
# Refuse decompression bombs before decoding them (`images.load_image`).
MAX_PIXELS = 40_000_000
# Cross-view patterns `PairExplanation.patterns` finds and `simexplain pair` draws.
DEFAULT_PATTERNS = 5
# The largest model input side `--size` accepts (the command line's help shows it): the
# activations and the P x Q pair matrix grow with its square and fourth power
MAX_SIZE = 1024

# `simexplain train`: what it trains and its defaults (`training` uses them; tests/test_training.py
# checks FMNIST_HEADS against the zoo's heads)
TRAINABLE = ("fmnist", "sketch")
# a CNN with a pooling head (gap, gmp) or the class-token ViT
FMNIST_HEADS = ("gap", "gmp", "vit")
DEFAULT_EPOCHS = 8
# The ViT trains on the CPU within about 15 minutes (2 threads): one pass over the data.
VIT_EPOCHS = 1
SKETCH_EPOCHS = 2
DEFAULT_SEED = 0
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 2e-3

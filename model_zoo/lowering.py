"""How a forward pass is traced: one frozen, validated object that the model's call takes.

The same numbers come out whatever is chosen here; the choices shape the traced program for the
compiler or converter that will read it:

- `Composites`: which fused regions are marked as composites (`model_zoo.composites`), each of
  which a consumer may map to one fused kernel or run as its plain decomposition.
- `Head`: the form of the LM head's contraction.
- `Logits`: which positions get logits, if any.
"""

from __future__ import annotations

import dataclasses
import enum

from model_zoo.errors import GemmaforgeError


class Composites(enum.Flag):
    """Fused regions traced as composites; the rest is traced as plain ops.

    CORE: RMS norm, attention, the KV-cache write and the final soft-cap.
    ROPE: the rotary embedding (only together with CORE).
    TABLE: the tied table's two uses, the embedding lookup and the final soft-cap, so that a
      quantizer can see one table behind both (with or without CORE).
    """

    NONE = 0
    CORE = enum.auto()
    ROPE = enum.auto()
    TABLE = enum.auto()


class Head(enum.Enum):
    """The LM head's contraction: the same product written for two kinds of kernel.

    TABLE_LEFT: [V, D] x [B, T, D] -> [V, B, T], a row-major matrix-vector product for one
      decoded token (XLA runs it ~1.7x and IREE ~20x faster than the other form).
    TOKENS_LEFT: 'BTD,VD->BTV', which converters turn into a fully connected op (~1.6x faster
      in XNNPACK than the batch matmul made of the other form).
    """

    TABLE_LEFT = "table-left"
    TOKENS_LEFT = "tokens-left"


class Logits(enum.Enum):
    """Where the forward computes logits.

    EVERY: at every new token, [B, T, V].
    AT_INDEX: at one index of T per row (`logits_index` [B]), [B, 1, V]: the LM head is the
      largest matmul, and a prefill needs one row of it.
    NONE: none; the last layer stops at its cache write (a prefill whose logits nobody reads).
      Composites survive dead-code elimination, so this has to be said, not inferred.
    """

    EVERY = "every"
    AT_INDEX = "at-index"
    NONE = "none"


@dataclasses.dataclass(frozen=True)
class Lowering:
    """The traced program's shape. Hashable, so it can be a static argument of `jax.jit`."""

    composites: Composites = Composites.CORE
    head: Head = Head.TABLE_LEFT
    logits: Logits = Logits.EVERY

    def __post_init__(self):
        if not isinstance(self.composites, Composites):
            raise GemmaforgeError(f"composites must be a Composites flag, got {self.composites!r}")
        if not isinstance(self.head, Head):
            raise GemmaforgeError(f"head must be a Head, got {self.head!r}")
        if not isinstance(self.logits, Logits):
            raise GemmaforgeError(f"logits must be a Logits, got {self.logits!r}")
        if Composites.ROPE in self.composites and Composites.CORE not in self.composites:
            raise GemmaforgeError("Composites.ROPE marks the rotary embedding inside the core "
                                  "composites: add Composites.CORE")

    @property
    def core(self) -> bool:
        return Composites.CORE in self.composites

    @property
    def rope(self) -> bool:
        return Composites.ROPE in self.composites

    @property
    def table(self) -> bool:
        return Composites.TABLE in self.composites

    def without_composites(self) -> Lowering:
        """The same program with every region as plain ops."""
        return dataclasses.replace(self, composites=Composites.NONE)


FUSED = Lowering()  # the default: core composites, head for one decoded token, every logit
PLAIN = Lowering(composites=Composites.NONE)

"""The model configuration: one frozen dataclass, with every per-layer choice held as data.

A Gemma model is fully described by `ModelConfig`. Per-layer behaviour (local sliding-window or
global attention, the RoPE base of each) comes from `attention_pattern`, repeated over the layers,
never from `if layer_idx % 2` inside a layer.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math

from model_zoo.errors import GemmaforgeError


class Family(enum.Enum):
    """The Gemma generation: fixes norm placement, soft-capping and QK-norm defaults."""

    GEMMA1 = "gemma1"
    GEMMA2 = "gemma2"
    GEMMA3 = "gemma3"


@dataclasses.dataclass(frozen=True)
class FamilyNames:
    """What other tools call a family: GGUF's `general.architecture`, and the text model's
    `model_type` and class in a transformers config.json (onnxruntime-genai's model types are
    these `model_type`s too)."""

    gguf: str
    model_type: str
    architecture: str


FAMILY_NAMES = {
    Family.GEMMA1: FamilyNames("gemma", "gemma", "GemmaForCausalLM"),
    Family.GEMMA2: FamilyNames("gemma2", "gemma2", "Gemma2ForCausalLM"),
    Family.GEMMA3: FamilyNames("gemma3", "gemma3_text", "Gemma3ForCausalLM"),
}


class AttentionType(enum.Enum):
    """Global attention sees the whole causal prefix; local sees only the last `sliding_window`."""

    GLOBAL = "global"
    LOCAL = "local"


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What differs between layers of one model, derived from the config."""

    attention_type: AttentionType
    window: int | None  # keys with query_pos - key_pos < window are visible; None: unbounded
    rope_base: float
    rope_scale: float  # positions are divided by this before the rotation


# How activations may be rounded: None (float) or dynamic int8 per token. One definition for
# ModelConfig.activation_quant and for the recipes' specs (quantize.spec.QuantSpec.activations).
ACTIVATION_QUANT = (None, "int8-dynamic")

# Bounds on the sizes a config read from a file may give, far above the largest real Gemma
# (Gemma 3 27B: 62 layers, d_model 5376, 21504 hidden, 32 heads of 128, 262144 tokens, 128k
# context). Past them a config is crafted or corrupt, and trusting it would loop or allocate
# without bound before any weight is read.
MAX_LAYERS = 1024
MAX_EMBED_DIM = 1 << 16
MAX_HIDDEN_DIM = 1 << 20
MAX_HEADS = 1024
MAX_HEAD_DIM = 1 << 12
MAX_VOCAB = 1 << 20
MAX_CONTEXT = 1 << 24
SIZE_LIMITS = {"vocab_size": MAX_VOCAB, "embed_dim": MAX_EMBED_DIM, "num_layers": MAX_LAYERS,
               "num_heads": MAX_HEADS, "num_kv_heads": MAX_HEADS, "head_dim": MAX_HEAD_DIM,
               "hidden_dim": MAX_HIDDEN_DIM, "max_context": MAX_CONTEXT,
               "sliding_window": MAX_CONTEXT}


def is_integer(value: object) -> bool:
    """An integer as JSON or GGUF metadata gives one (bool is not one, nor 1e7)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: object) -> str:
    """A value from a file for a one-line message: repr'd (no raw newlines), cut when long."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def size_problem(field: str, value: object, limit: int) -> str | None:
    """Why `value` is not a size from 1 to `limit`, or None when it is one."""
    if is_integer(value) and 1 <= value <= limit:
        return None
    return f"{field} is {_shown(value)}; expected an integer from 1 to {limit}"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Gemma decoder.

    Attributes:
      name: preset name (informational).
      family: Gemma generation.
      vocab_size: V, rows of the tied embedding.
      embed_dim: D, the residual width.
      num_layers: L.
      num_heads: N query heads.
      num_kv_heads: K key/value heads (1: MQA, N: MHA, else GQA).
      head_dim: H.
      hidden_dim: F, width of EACH GeGLU branch (the papers' "feedforward dim" counts both).
      attention_pattern: attention types repeated cyclically over the layers (layer 0 first).
      sliding_window: W for local layers.
      rope_base_global / rope_base_local: RoPE wavelength base per attention type.
      rope_scale_global: linear position scaling of global layers (1.0: none).
      query_pre_attn_scalar: queries are scaled by query_pre_attn_scalar ** -0.5.
      attn_logit_softcap / final_logit_softcap: cap * tanh(x / cap), None to disable.
      use_post_attn_norm / use_post_ffw_norm: Gemma 2/3 norm "sandwich".
      use_qk_norm: RMSNorm over head_dim on queries and keys (Gemma 3).
      max_context: the context length the model was trained for.
      norm_eps: RMSNorm epsilon.
      bos_id / eos_id / pad_id: special token ids shared by every Gemma vocabulary.
      activation_quant: a record, which the model itself never reads: None (float
        activations), or "int8-dynamic" for a recipe with dynamic int8 activations, whose
        model `quantize.activation_projection` builds with a projection that rounds every
        matmul's input to int8 per token.
    """

    name: str
    family: Family
    vocab_size: int
    embed_dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_dim: int
    attention_pattern: tuple[AttentionType, ...]
    sliding_window: int | None
    rope_base_global: float
    rope_base_local: float
    query_pre_attn_scalar: float
    attn_logit_softcap: float | None
    final_logit_softcap: float | None
    use_post_attn_norm: bool
    use_post_ffw_norm: bool
    use_qk_norm: bool
    max_context: int
    rope_scale_global: float = 1.0
    norm_eps: float = 1e-6
    bos_id: int = 2
    eos_id: int = 1
    pad_id: int = 0
    activation_quant: str | None = None

    def __post_init__(self) -> None:
        problems = []
        for field in ("vocab_size", "embed_dim", "num_layers", "num_heads", "num_kv_heads",
                      "head_dim", "hidden_dim", "max_context"):
            if getattr(self, field) <= 0:
                problems.append(f"{field} must be positive, got {getattr(self, field)}")
        if self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
            problems.append(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})")
        if self.head_dim % 2:
            problems.append(f"head_dim must be even for RoPE, got {self.head_dim}")
        if not self.attention_pattern:
            problems.append("attention_pattern must name at least one attention type")
        if AttentionType.LOCAL in self.attention_pattern and not self.sliding_window:
            problems.append("a LOCAL attention layer needs sliding_window > 0")
        if self.activation_quant not in ACTIVATION_QUANT:
            problems.append(f"activation_quant must be one of {list(ACTIVATION_QUANT)}, got "
                            f"{self.activation_quant!r}")
        if problems:
            raise GemmaforgeError(f"invalid ModelConfig {self.name!r}: " + "; ".join(problems))

    @property
    def attention_types(self) -> tuple[AttentionType, ...]:
        """The attention type of every layer, the pattern repeated over `num_layers`."""
        return tuple(itertools.islice(itertools.cycle(self.attention_pattern), self.num_layers))

    def layer(self, index: int) -> LayerSpec:
        """The per-layer spec of layer `index`."""
        kind = self.attention_types[index]
        if kind is AttentionType.LOCAL:
            return LayerSpec(kind, self.sliding_window, self.rope_base_local, 1.0)
        return LayerSpec(kind, None, self.rope_base_global, self.rope_scale_global)

    @property
    def query_scale(self) -> float:
        return 1.0 / math.sqrt(self.query_pre_attn_scalar)


def config_to_dict(config: ModelConfig) -> dict:
    """Plain JSON-ready data (enums as their values)."""
    data = dataclasses.asdict(config)
    data["family"] = config.family.value
    data["attention_pattern"] = [t.value for t in config.attention_pattern]
    return data


POSITIVE_NUMBERS = ("rope_base_global", "rope_base_local", "query_pre_attn_scalar",
                    "rope_scale_global", "norm_eps")
OPTIONAL_POSITIVE_NUMBERS = ("attn_logit_softcap", "final_logit_softcap")
FLAGS = ("use_post_attn_norm", "use_post_ffw_norm", "use_qk_norm")
TOKEN_IDS = ("bos_id", "eos_id", "pad_id")


def _value_problems(data: dict) -> list[str]:
    """Why the fields other than the sizes hold values of the wrong kind (a config from a
    file: a list where a number goes would fail deep inside the model)."""
    problems = []
    for field in POSITIVE_NUMBERS + OPTIONAL_POSITIVE_NUMBERS:
        value = data.get(field)
        if field not in data or value is None and field in OPTIONAL_POSITIVE_NUMBERS:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or value <= 0:
            problems.append(f"{field} is {_shown(value)}; expected a positive finite number")
    problems += [f"{field} is {_shown(data[field])}; expected true or false"
                 for field in FLAGS if field in data and not isinstance(data[field], bool)]
    vocab = data.get("vocab_size") if is_integer(data.get("vocab_size")) else MAX_VOCAB
    problems += [f"{field} is {_shown(data[field])}; expected a token id from 0 to {vocab - 1}"
                 for field in TOKEN_IDS
                 if field in data and not (is_integer(data[field]) and 0 <= data[field] < vocab)]
    if "name" in data and not isinstance(data["name"], str):
        problems.append(f"name is {_shown(data['name'])}; expected a string")
    pattern = data.get("attention_pattern")
    if "attention_pattern" in data and not (isinstance(pattern, list | tuple)
                                            and 1 <= len(pattern) <= MAX_LAYERS
                                            and all(isinstance(t, str) for t in pattern)):
        problems.append(f"attention_pattern is {_shown(pattern)}; expected a list of 1 to "
                        f"{MAX_LAYERS} attention types")
    if not isinstance(data.get("activation_quant"), str | None):
        problems.append(f"activation_quant is {_shown(data['activation_quant'])}; expected a "
                        "string or null")
    return problems


def config_from_dict(data: dict) -> ModelConfig:
    """The inverse of `config_to_dict`; unknown or missing fields are a clear error."""
    if not isinstance(data, dict):
        raise GemmaforgeError(f"invalid model config: a {type(data).__name__}, not an object")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(data) - fields
    if unknown:
        raise GemmaforgeError("unknown model config field(s): "
                              + ", ".join(_shown(field) for field in sorted(unknown)))
    sizes = [size_problem(field, data[field], limit) for field, limit in SIZE_LIMITS.items()
             if field in data and not (field == "sliding_window" and data[field] is None)]
    problems = [problem for problem in sizes if problem] + _value_problems(data)
    if problems:
        raise GemmaforgeError("invalid model config: " + "; ".join(problems))
    try:
        return ModelConfig(**{
            **data,
            "family": Family(data["family"]),
            "attention_pattern": tuple(AttentionType(t) for t in data["attention_pattern"]),
        })
    except (KeyError, TypeError, ValueError) as error:
        raise GemmaforgeError(f"invalid model config: {' '.join(str(error).split())}") \
            from None

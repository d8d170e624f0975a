"""Test setup. Eight virtual CPU devices, so the sharding tests have a 2x4 mesh; XLA reads the
flag once, before JAX first runs, hence here, before anything imports jax."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

import model_zoo as mz  # noqa: E402

TINY_PRESETS = ("tiny-gemma1", "tiny-gemma2", "tiny-gemma3")


def expected_composites(config, *, logits: bool) -> dict[str, int]:
    """How many of each fused op one forward of `config` carries."""
    from model_zoo import composites

    layers = config.num_layers
    per_layer = 2 + 2 * config.use_post_attn_norm + 2 * config.use_qk_norm
    # Without logits the last layer stops at its cache write: its pre-attention norm and key
    # norm only, no attention; and there is no final norm.
    norms = (layers * per_layer + 1 if logits
             else (layers - 1) * per_layer + 1 + config.use_qk_norm)
    counts = {composites.KV_CACHE_UPDATE: layers,
              composites.SDPA: layers if logits else layers - 1, composites.RMS_NORM: norms}
    if logits and config.final_logit_softcap is not None:
        counts[composites.SOFT_CAP] = 1
    return dict(sorted(counts.items()))


@pytest.fixture(scope="session")
def tiny_params():
    """Seeded random parameters of each tiny preset, made once per session."""
    cache = {}

    def get(name: str, seed: int = 0):
        if (name, seed) not in cache:
            cache[name, seed] = mz.init_params(mz.get_preset(name), seed)
        return cache[name, seed]

    return get


def pytest_report_header(config):
    return f"jax {jax.__version__}, {len(jax.devices())} {jax.devices()[0].platform} devices"


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, tiny_params):
    """An artifact directory of each tiny preset, StableHLO and LiteRT (buckets 8 and 32,
    cache 128), made once per session."""
    from exporter import export

    made = {}

    def get(name: str):
        if name not in made:
            config = mz.get_preset(name)
            model = mz.LoadedModel(config, tiny_params(name), mz.ByteTokenizer(),
                                   "random weights (seed 0)", True)
            out = tmp_path_factory.mktemp("artifacts") / name
            export(model, out, formats=("stablehlo", "litert"), buckets=(8, 32))
            made[name] = out
        return made[name]

    return get

"""Test setup. Eight virtual CPU devices, so the sharding tests have a 2x4 mesh; XLA reads the
flag once, before JAX first runs, hence here, before anything imports jax."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

import model_zoo as mz  # noqa: E402

TINY_PRESETS = ("tiny-gemma1", "tiny-gemma2", "tiny-gemma3")


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
    """A StableHLO artifact directory of each tiny preset (buckets 8 and 32, cache 128), made
    once per session."""
    from exporter import export

    made = {}

    def get(name: str):
        if name not in made:
            config = mz.get_preset(name)
            model = mz.LoadedModel(config, tiny_params(name), mz.ByteTokenizer(),
                                   "random weights (seed 0)", True)
            out = tmp_path_factory.mktemp("artifacts") / name
            export(model, out, buckets=(8, 32))
            made[name] = out
        return made[name]

    return get

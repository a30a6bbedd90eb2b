"""The public face: `import memjax` names the API, loads lazily, and its example runs."""
import subprocess
import sys

import numpy as np

import memjax


def test_every_public_name_resolves():
    for name in memjax.__all__:
        assert getattr(memjax, name) is not None, name
    assert memjax.metrics.lass is not None and "Runner" in dir(memjax)


def test_import_does_not_load_jax():
    code = "import sys, memjax; assert 'jax' not in sys.modules; memjax.Runner; " \
           "assert 'jax' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_docstring_example_runs():
    lines = [line[4:] for line in memjax.__doc__.split("\n\n")[2].splitlines()]
    scope: dict = {}
    exec("\n".join(lines), scope)
    assert scope["outcome"].history["train_loss"].shape == (2, 4)
    assert scope["outcome"].history["validation_accuracy"].shape == (2, 4)
    assert np.asarray(scope["s"]).shape[0] == 4

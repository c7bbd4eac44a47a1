"""The packages' lazy exports: importing them loads neither torch nor PyAV, a name loads its module on first use,
and an unknown name is an AttributeError that names the package."""
import subprocess
import sys

import pytest

PACKAGES = ["vitok", "vitok.data", "vitok.codecs", "vitok.evaluation", "vitok.train"]


def test_importing_the_packages_loads_neither_torch_nor_pyav(tmp_path):
    code = ("import sys, " + ", ".join(PACKAGES) + "\n"
            "print(sorted(m for m in ('torch', 'av', 'compressai') if m in sys.modules))")
    # run outside the checkout: from its root, the bare vitok/ folder would shadow a non-editable install
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("package, name, module", [
    ("vitok", "Latents", "vitok.latents"),
    ("vitok.data", "frames_to_tensor", "vitok.data.convert"),
    ("vitok.codecs", "read_vtok", "vitok.codecs.container"),
    ("vitok.evaluation", "bd_rate", "vitok.evaluation.bdrate"),
    ("vitok.train", "load_config", "vitok.train.config"),
])
def test_a_name_loads_from_its_module_and_stays(package, name, module):
    import importlib

    pkg = importlib.import_module(package)
    value = getattr(pkg, name)
    assert value is getattr(sys.modules[module], name)
    assert vars(pkg)[name] is value          # kept: the next lookup does not go through __getattr__
    assert name in dir(pkg) and dir(pkg) == sorted(pkg.__all__)


@pytest.mark.parametrize("package", PACKAGES)
def test_an_unknown_name_is_an_attribute_error_naming_the_package(package):
    import importlib

    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        getattr(importlib.import_module(package), "no_such_name")

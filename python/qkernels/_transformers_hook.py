"""Register qkernels with transformers when transformers loads its quantizer registry, not when
qkernels is imported: importing transformers' quantizers takes about a second, which
`import qkernels` alone must not pay (and a machine without transformers pays nothing).

transformers looks a quantization method up in transformers.quantizers.auto, which
modeling_utils imports before any from_pretrained runs; qkernels.hf is imported right after
that module has executed.
"""

import importlib.abc
import importlib.metadata
import importlib.util
import sys

REGISTRY_MODULE = "transformers.quantizers.auto"
# The oldest transformers whose quantizer hooks qkernels.hf implements; older ones are left alone.
MIN_TRANSFORMERS = (4, 50)


def transformers_version() -> tuple:
    return tuple(int(part) for part in importlib.metadata.version("transformers").split(".")[:2])


def _register() -> None:
    if transformers_version() >= MIN_TRANSFORMERS:
        import qkernels.hf  # noqa: F401  (registers on import)


class _RegisterAfterRegistryImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of REGISTRY_MODULE so that qkernels.hf is
    imported once that module has run. Removes itself after the first use."""

    def find_spec(self, name, path, target=None):
        if name != REGISTRY_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if transformers' registry is already loaded, else when it loads."""
    if REGISTRY_MODULE in sys.modules:
        _register()
    elif importlib.util.find_spec("transformers") is not None and not any(
            isinstance(finder, _RegisterAfterRegistryImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterRegistryImport())

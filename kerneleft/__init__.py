"""kerneleft: finite-width collective kernel EFT for pre-activation ResNets (see docs/index.md)."""
from .activations import Activation, get_activation
from .config import Network, load_config, network_from_dict
from .result import KernelResult
from ._version import __version__

__all__ = ["__version__", "Activation", "get_activation", "Network", "load_config", "network_from_dict", "KernelResult"]

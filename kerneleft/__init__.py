"""kerneleft: finite-width collective kernel EFT for pre-activation ResNets (see THEORY.md)."""
from .activations import Activation, get_activation
from .config import Network, load_config, network_from_dict
from .result import KernelResult

__version__ = "0.1.0"
__all__ = ["Activation", "get_activation", "Network", "load_config", "network_from_dict", "KernelResult"]

"""Loss balancers (`loss.weighting`): how the scaled task losses become one update.

`mtbench.balancing.base` states the contract, `loss_based` the balancers that weight the losses
(fixed, equal, uncertainty, dwa, rlw, gls, famo, gradnorm), `jacobian` those that aggregate the task
gradients of the shared parameters through TorchJD (upgrad, mgda, pcgrad, cagrad, nashmtl, imtlg,
aligned_mtl, dualproj, graddrop).
"""

from mtbench.balancing import jacobian, loss_based  # noqa: F401  (register the balancers)
from mtbench.balancing.base import Balancer
from mtbench.balancing.registry import BalancerEntry, build_balancer, register_balancer

__all__ = ["Balancer", "BalancerEntry", "build_balancer", "register_balancer"]

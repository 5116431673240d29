"""Record your own training run's routing: `from moe.record import RoutingRecorder, MoeScopeCallback`."""
from moe.record.callback import MoeScopeCallback
from moe.record.recorder import RoutingRecorder

__all__ = ["MoeScopeCallback", "RoutingRecorder"]

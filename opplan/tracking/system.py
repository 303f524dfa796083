"""System metrics in the planning, final and baseline runs (MLflow's system-metrics monitor).

While such a run trains, a thread samples every ``tracking.system_metrics_seconds`` and logs
``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes`` (and
percentage), disk and network figures and, where NVML is there (``nvidia-ml-py``), each GPU's
``system/gpu_<i>_utilization_percentage`` and memory: whether the GPU was fed is one chart
of the run's *System metrics* tab in the MLflow UI. On CUDA opplan adds what PyTorch itself
holds, ``system/gpu_<i>_torch_allocated_megabytes`` and ``..._torch_reserved_megabytes``
(also without NVML). CPU and memory are the machine's, so the planning run's figures cover
its worker processes too.
"""

from __future__ import annotations

import logging

from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

log = logging.getLogger(__name__)


class TorchCudaMonitor(BaseMetricsMonitor):
    """Memory PyTorch's caching allocator holds on each visible GPU (this process's share)."""

    def collect_metrics(self) -> None:
        import torch

        for i in range(torch.cuda.device_count()):
            self._metrics[f"gpu_{i}_torch_allocated_megabytes"].append(torch.cuda.memory_allocated(i) / 1e6)
            self._metrics[f"gpu_{i}_torch_reserved_megabytes"].append(torch.cuda.memory_reserved(i) / 1e6)

    def aggregate_metrics(self) -> dict[str, float]:
        return {key: round(sum(values) / len(values), 1) for key, values in self._metrics.items() if values}


def start_monitor(run_id: str, tracking_uri: str, seconds: float) -> SystemMetricsMonitor | None:
    """A started monitor logging into ``run_id`` every ``seconds`` (continuing the steps of a
    resumed run), or None when ``seconds`` is 0 or the monitor cannot run here."""
    if seconds <= 0:
        return None
    try:
        monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds, resume_logging=True,
                                       tracking_uri=tracking_uri)
    except Exception as exc:  # noqa: BLE001 - e.g. psutil missing: training goes on without system metrics
        log.warning("system metrics are not logged for MLflow run %s: %s", run_id, exc)
        return None
    import torch

    if torch.cuda.is_available():
        monitor.monitors.append(TorchCudaMonitor())
    monitor.start()
    return monitor

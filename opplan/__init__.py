"""opplan: Optimization Planning for 3D ConvNets (Qiu et al., ICML 2021) on MLflow and DVC."""

__version__ = "0.1.0"

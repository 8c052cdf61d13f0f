"""sed: Scale-Equivalent Distillation for semi-supervised object detection, in plain PyTorch."""
from sed.model import FasterRCNN, build_model, load_torchvision_weights

__all__ = ["FasterRCNN", "build_model", "load_torchvision_weights"]

"""rococap: captioning of ROCOv2 radiology images with Qwen2-VL, locally or distributed."""

__version__ = "0.1.0"

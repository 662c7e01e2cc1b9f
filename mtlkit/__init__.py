"""mtlkit: multi-task and transfer learning with pretrained transformer encoders."""

__version__ = "0.1.0"

"""Importers of other people's weights: the official PyTorch checkpoints, torchvision/Caffe VGG16 files."""

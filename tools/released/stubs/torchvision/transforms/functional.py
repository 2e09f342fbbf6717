"""Empty ``torchvision.transforms.functional``: imported by the releases, never called by the fixture writers."""

"""Cutie (Cheng et al., CVPR 2024): ``config`` (architecture variants, no torch), ``model`` (the
network and its stages), ``blocks``, ``resnet``, ``transformer``."""

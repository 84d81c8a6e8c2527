"""JointFormer (Zhang et al.): ``topk`` (the top-K options, no torch), ``model`` (the network and
its stages), ``backbone``, ``vit``, ``conv_stages``, ``decoder``."""

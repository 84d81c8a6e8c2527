"""Package discovery (everything else is in pyproject.toml).

The code folders live at the top level of the repository (models/, export/, kernels/, runtime/)
but install only under the ``vosrt`` namespace: nothing generic such as a top-level ``models``
package lands in site-packages. Every package under those folders is found, none listed by hand.
"""
from setuptools import find_packages, setup

FOLDERS = {"vosrt": "vosrt", "vosrt.models": "models", "vosrt.export": "export", "vosrt.kernels": "kernels",
           "vosrt.runtime": "runtime"}

setup(
    package_dir=FOLDERS,
    packages=[name for prefix, folder in FOLDERS.items()
              for name in (prefix, *(f"{prefix}.{sub}" for sub in find_packages(folder)))],
)

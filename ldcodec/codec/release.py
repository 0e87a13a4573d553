"""The model the package ships as its default: the one name each release changes.

Kept free of imports so that the CLI's defaults, the trainers and the tools can all read it
cheaply (``ldcodec train --run``, ``train-diffusion --base`` and the plot tools default to it).
"""

DEFAULT_MODEL_ID = "hp-v10"

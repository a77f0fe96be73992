"""Every source format and its pair of functions (list the inputs of a source, load one input).

The native formats live in ``adapters``; recipes (official download layouts) build on them in
``recipe_adapter``. Joined here so that neither module imports the other's caller.
"""

from __future__ import annotations

from medrov.data.adapters import ADAPTERS as NATIVE
from medrov.data.recipe_adapter import enumerate_recipe, load_recipe

ADAPTERS = {**NATIVE, "recipe": (enumerate_recipe, load_recipe)}

"""Handler plugins: modules installed at the silo that register handlers when imported.

The silo operator names them in silo.toml (``[agent] plugins = ["acme_fedsilo.sketch"]``)
and/or in ``FEDSILO_AGENT_PLUGINS`` (comma-separated). The agent imports each one before it
serves a run; a plugin registers with `silos.handlers.registry.register_extension` (a round
mode of its own) or `register` (a built-in task type, with ``replace=True``). The coordinator
never names a module: the agent still runs only code its operator installed and listed.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping

from silos.exceptions import PluginError

ENV_PLUGINS = "FEDSILO_AGENT_PLUGINS"


def plugin_names(configured: Iterable[str], env: Mapping[str, str] | None = None) -> list[str]:
    """The modules to import: silo.toml's first, then the environment's, each once."""
    env = os.environ if env is None else env
    from_env = [n.strip() for n in env.get(ENV_PLUGINS, "").split(",") if n.strip()]
    return list(dict.fromkeys([*configured, *from_env]))


def load_plugins(names: Iterable[str]) -> list[str]:
    """Import each plugin module (its handlers register at import); returns their names.

    Raises
    ------
    PluginError
        naming the module that is not installed or fails at import, and where it was listed.
    """
    import silos.handlers  # noqa: F401  (built-in handlers first: a plugin may replace one)

    loaded = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise PluginError(
                f"handler plugin {name!r} (silo.toml [agent] plugins or {ENV_PLUGINS}) is not "
                f"importable here: {exc}; install it in the agent's environment or remove it"
            ) from exc
        except Exception as exc:  # a plugin's own bug at import: name it, do not start
            raise PluginError(
                f"handler plugin {name!r} failed while registering: {type(exc).__name__}: {exc}"
            ) from exc
        loaded.append(name)
    return loaded

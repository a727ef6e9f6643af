"""Config handling: where conf/ lives, strict validation, and the one instantiate wrapper."""

from fmlab.config.build import build
from fmlab.config.compose import CONF_DIR, compose_config
from fmlab.config.validate import ConfigError, validate_config

__all__ = ["CONF_DIR", "ConfigError", "build", "compose_config", "validate_config"]

"""The config tree's shared parts (`tree`); each method's tree lives beside the method."""

from .tree import ConfigError, as_dict, get, override, parse_changes

__all__ = ["ConfigError", "as_dict", "get", "override", "parse_changes"]

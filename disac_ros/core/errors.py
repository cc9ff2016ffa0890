"""Domain exceptions. The core raises these; nodes and CLIs catch them at the boundary."""


class DisacError(Exception):
    """Base class of every error the core raises on purpose."""


class ConfigError(DisacError, ValueError):
    """A configuration value is missing, of the wrong type or out of range.

    The message always names the offending field with its dotted path, e.g.
    ``objects[2].class: unknown class 'bus'; expected one of car, truck, pedestrian, cyclist``.
    """

    def __init__(self, field: str, problem: str, source: str | None = None):
        self.field = field
        self.problem = problem
        self.source = source
        where = f'{source}: ' if source else ''
        super().__init__(f'{where}{field}: {problem}')


class ScenarioError(ConfigError):
    """A scenario YAML is invalid."""


class DatasetError(DisacError):
    """A dataset folder is missing, incomplete or corrupt."""


class ModelError(DisacError):
    """A model folder is missing, incomplete or corrupt; the message names the path."""

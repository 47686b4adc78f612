"""Errors raised inside a silo.

    SiloError
    ├── DataError            a data file cannot be read, or its rows do not fit the contract
    │   └── DemoDataError    the bundled demo data is not installed
    ├── FeatureError         rows cannot be encoded (unknown category, unexpected missing value)
    ├── ModelError           parameters do not fit the model spec, or training cannot run
    ├── SiloConfigError      silo.toml or the key file is missing or malformed
    ├── PolicyRefusal        the silo's own policy forbids the work
    ├── PrivacyBudgetError   the privacy budget file fails its signature check (edited,
    │                        deleted or replaced): the silo trains no more until restored
    ├── UnsupportedTask      no handler is installed for a task (type or extension mode), or
    │                        an extension task's body does not fit its handler's model
    ├── PluginError          a plugin module named in silo.toml or FEDSILO_AGENT_PLUGINS
    │                        cannot be imported
    └── BufferedUpdateMissing  an asynchronous secure buffer's cohort asks for the update
                             the silo kept, and it is gone (erased after a failure)

Each message names the file, column or parameter at fault and says what to do about it.
"""


class SiloError(Exception):
    """Base class for errors raised inside a silo.

    `examples` are row values that help the silo's operator (shown in ``str(exc)``, logged
    at the silo) but must not leave it: `shareable` is the message without them, what a
    decline sent to the service carries (`silos.decline.declined_for`).
    """

    def __init__(self, message: str = "", *, examples: list[str] | None = None) -> None:
        self.shareable = message
        self.examples = examples
        super().__init__(f"{message}; e.g. {examples}" if examples else message)

    def __reduce__(self) -> tuple[object, ...]:
        # as raised, whatever a subclass's __init__ takes (a Prefect task's result is pickled)
        return _restore, (type(self), self.args, self.__dict__)


def _restore(cls: type[SiloError], args: tuple[object, ...], state: dict[str, object]) -> SiloError:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class DataError(SiloError):
    """A data file is missing, empty, unreadable or of an unsupported kind, or a row is invalid."""


class DemoDataError(DataError):
    """The demo dataset's package is not installed."""


class FeatureError(SiloError):
    """A value cannot be turned into features under the data contract."""


class ModelError(SiloError):
    """Parameters do not match the model spec, or the training data cannot be used."""


class SiloConfigError(SiloError):
    """The silo's configuration file or key file is missing or malformed."""


class PolicyRefusal(SiloError):
    """The silo's own policy forbids the work it was asked to do."""


class UnsupportedTask(SiloError):
    """No handler is installed at this silo for a task, or its body does not fit the handler."""


class PluginError(SiloError):
    """A handler plugin module cannot be imported (not installed, or it fails at import)."""


class PrivacyBudgetError(SiloError):
    """The signed privacy budget file was edited, deleted or replaced; training stops."""


class BufferedUpdateMissing(SiloError):
    """The kept update an asynchronous secure buffer's cohort asks for is gone or another one."""

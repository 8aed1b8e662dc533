"""Errors the CLI reports as one line, each with its own exit code."""


class XdpnnError(Exception):
    """Base: the message names the step and the object."""
    exit_code = 1


class UsageError(XdpnnError):
    exit_code = 2


class ModelFileError(XdpnnError):
    exit_code = 3


class BuildError(XdpnnError):
    """Compilation or the verifier rejected the program."""
    exit_code = 4


class AttachError(XdpnnError):
    """Interfaces, namespaces, pins or the XDP attach itself."""
    exit_code = 5


class MismatchError(XdpnnError):
    """`verify` found inputs where the kernel and the reference disagree."""
    exit_code = 6


class StateError(XdpnnError):
    """Nothing attached where the command expects it, or stale state."""
    exit_code = 7


class MissingFeatureError(XdpnnError):
    """A kernel feature, tool or library xdpnn needs is not there."""
    exit_code = 8


class PrivilegeError(XdpnnError):
    """The command needs root."""
    exit_code = 9


class DataError(XdpnnError):
    """`train` could not read its data source."""
    exit_code = 10


EXIT_CODES = {cls.__name__: cls.exit_code for cls in
              (XdpnnError, UsageError, ModelFileError, BuildError, AttachError,
               MismatchError, StateError, MissingFeatureError, PrivilegeError, DataError)}

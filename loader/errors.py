"""Errors the CLI reports as one line, each with its own exit code.

Each class's docstring is its meaning in `xdpnn --help` and docs/commands.md.
"""


class XdpnnError(Exception):
    """Other error (the message names the step and the object)."""
    exit_code = 1


class UsageError(XdpnnError):
    """Bad usage: an option, argument or name that is not valid."""
    exit_code = 2


class ModelFileError(XdpnnError):
    """Bad model file: missing, unreadable or not in the format."""
    exit_code = 3


class BuildError(XdpnnError):
    """BPF failure: compile, verifier or system call."""
    exit_code = 4


class AttachError(XdpnnError):
    """Attach failure: interface, namespace, pins or the XDP attach itself."""
    exit_code = 5


class MismatchError(XdpnnError):
    """The kernel or a baseline disagrees with the reference (`verify`, `predict`, `bench`)."""
    exit_code = 6


class StateError(XdpnnError):
    """Not attached, or already attached, where the command expects otherwise."""
    exit_code = 7


class MissingFeatureError(XdpnnError):
    """A kernel feature, tool or library xdpnn needs is missing."""
    exit_code = 8


class PrivilegeError(XdpnnError):
    """The command needs root."""
    exit_code = 9


class DataError(XdpnnError):
    """Bad training data: `train` cannot read its data source."""
    exit_code = 10


class GraphError(XdpnnError):
    """Bad graph: `import` cannot map an ONNX graph onto the model format (names the node)."""
    exit_code = 11


class InternalError(XdpnnError):
    """Internal error: a bug in xdpnn (XDPNN_DEBUG=1 shows the traceback)."""
    exit_code = 70


ERRORS = (XdpnnError, UsageError, ModelFileError, BuildError, AttachError, MismatchError,
          StateError, MissingFeatureError, PrivilegeError, DataError, GraphError, InternalError)
INTERRUPTED = 130  # Ctrl-C (SIGINT) or SIGTERM
PIPE_CLOSED = 141  # the reader of the output went away, as a shell reports SIGPIPE


def exit_code_list() -> list[tuple[int, str]]:
    """(code, meaning) for every exit code the command returns."""
    return ([(0, "success")]
            + [(c.exit_code, _lower_first(c.__doc__.split(" (")[0].rstrip("."))) for c in ERRORS]
            + [(INTERRUPTED, "interrupted (Ctrl-C or SIGTERM)"),
               (PIPE_CLOSED, "the output pipe was closed (as with `| head`)")])


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]

"""The exceptions `nas` ends a command with: `NasError` for bad input, `NasBug` for a bug in nas itself; the
CLI turns each into a clean message, never a traceback."""


class NasError(Exception):
    """Bad input from the user (file, value, dataset, study): the message says where, what and what to do."""


class NasBug(Exception):
    """An error nas did not expect where it happened (`where`, e.g. a trial): a bug in nas, not in the input.
    It stops the command (it must not pass for a failed trial) with a message that asks for a report."""

    def __init__(self, where: str, error: BaseException):
        super().__init__(
            f"{where} stopped on an error that is a bug in nas, not in your input: {type(error).__name__}: {error}. "
            "Please report it with the command you ran and this message. What finished before it is saved; the "
            "same command continues the study.")

    @classmethod
    def relayed(cls, message: str) -> "NasBug":
        """The bug another process (a worker) hit, as it said it: stops this one with the same message."""
        bug = cls.__new__(cls)
        Exception.__init__(bug, message)
        return bug

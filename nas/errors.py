"""The one exception type that `nas` raises for bad input; the CLI turns it into a clean message."""


class NasError(Exception):
    """Bad input from the user (file, value, dataset, study): the message says where, what and what to do."""

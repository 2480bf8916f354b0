"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a single line on stderr and exit code 2, with no traceback.
Everything else is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """Bad input (recipe, data, checkpoint, argument). The message names the problem and the fix."""

    exit_code = 2

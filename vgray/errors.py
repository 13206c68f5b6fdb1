"""The one exception type for bad input.

Anything the user handed us that cannot be used (a config key, a YAML file, a dataset folder, an
image, a checkpoint, a shard) raises :class:`BadInput` with one line that names the culprit and
what is allowed. The command line prints that line and exits with status 2, no traceback.
"""


class BadInput(Exception):
    """Bad user input; ``str(exc)`` is a single line naming the culprit and what is allowed."""

    def __init__(self, message: str):
        # Keep the contract in code: a message is one line, whatever the caller passed, and a
        # line a terminal can show (values in messages are cut by :func:`shown` at the source).
        text = " ".join(str(message).split())
        super().__init__(text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…")


MAX_MESSAGE = 2000
MAX_VALUE = 80


def shown(value: object, limit: int = MAX_VALUE) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters (a value the user typed can be
    a whole YAML document, a path list or a 10 MB string)."""
    try:
        text = repr(value)
    except Exception:  # a repr that fails is shown by its type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} characters)"


def faiss_message(exc: Exception) -> str:
    """The useful line of a faiss C++ error (they come with file, line and function), for the
    one-line :class:`BadInput` of an index, a PCA or a file faiss refuses."""
    import re

    text = " ".join(str(exc).split())
    text = re.sub(r"^.*?Error in .*? at \S+:\d+: ", "", text)  # C++ function, file and line
    if "Error:" in text:
        text = text.split("Error:", 1)[1]
    text = re.sub(r"^.*?' failed: ", "", text)  # the failed assertion's expression
    return text.strip(" '\"")[:300]


def memory_failure(exc: BaseException) -> "str | None":
    """Whether ``exc`` is an allocator's refusal (``MemoryError``; torch's CPU "can't allocate
    memory", a CUDA "out of memory", also as a DataLoader worker's re-raised error): then the
    phrase saying how much it tried to take (``" (it tried to allocate 2.0 GiB)"``, or ``""``);
    else None."""
    import re

    text = str(exc)
    if re.search(r"DataLoader worker \(pid\(s\) [\d, ]+\) exited unexpectedly", text):
        return " (a data loader worker was killed, most often by the kernel as memory ran out)"
    if not isinstance(exc, MemoryError) and not re.search(r"can't allocate memory|out of memory", text):
        return None
    tried = re.search(r"allocate (\d+) bytes", text)
    if tried:
        return f" (it tried to allocate {int(tried.group(1)) / 2**30:,.1f} GiB)"
    tried = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]iB)", text)
    return f" (it tried to allocate {tried.group(1)})" if tried else ""

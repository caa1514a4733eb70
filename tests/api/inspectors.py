"""Stand-ins for an upload inspector that fails, run in the inspection child (a module of
their own, light to import there)."""

import os
import time


def allocate(megabytes: int) -> dict[str, int]:
    return {"length": len(bytearray(megabytes << 20))}


def die(signum: int) -> dict[str, int]:
    os.kill(os.getpid(), signum)
    return {}


def hang(seconds: float) -> dict[str, int]:
    time.sleep(seconds)
    return {}


def crash() -> dict[str, int]:
    raise KeyError("a reader's bug")

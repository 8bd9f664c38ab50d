"""The exception type for mistakes a user can make and fix, and the one for SIGTERM."""


class MtbenchError(Exception):
    """A user-caused error (bad config, unknown name, missing file, unreachable service).

    The CLI prints its message alone, with no traceback, and exits with code 2. The message
    says what went wrong, where, and how to fix it.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (scancel, preemption, `kill`), raised by the CLI's handler: it stops a trial like Ctrl-C, so
    the open run is closed as KILLED and the command exits 143."""


class Preempted(Terminated):
    """SLURM's USR2 under submitit (preemption, time limit): the trial stops like SIGTERM, then the job requeues
    and resumes from the checkpoint of the step it stopped at."""

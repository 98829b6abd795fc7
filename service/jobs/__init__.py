"""Jobs: the record and its states, the job store, the artifact store, the scheduler, executors and the worker.
Imports ``service.core``, ``service.agent`` (to hand agent targets to the pipeline) and ``pipeline``."""

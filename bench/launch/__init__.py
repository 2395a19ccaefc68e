"""Executors: run the missing cells of a sweep here (``local``) or as a SLURM job array (``slurm``)."""

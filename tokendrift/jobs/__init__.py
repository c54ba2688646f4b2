"""The pipeline's jobs, one module a job (each registers its ``tokendrift`` sub-command): they import
the library (tokendrift.core), never the grid or the reporting layer."""

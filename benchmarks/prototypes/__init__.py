"""Prototypes of proposed src changes and the scripts that measured them (see ../PROFILING.md)."""

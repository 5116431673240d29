"""The command line: `python -m moe` / `moe-scope <command>`."""

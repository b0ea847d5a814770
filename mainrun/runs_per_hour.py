"""The packing benchmark's old module name: cli.cmd_bench imports it for `bench --sweep`; it is in bench.py."""
from .bench import main  # noqa: F401

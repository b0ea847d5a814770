"""mainrun: a small workbench for the Mainrun problem (a GPT on Hacker News titles).

    import mainrun
    cfg = mainrun.make_config("quick", optimizer="adamw", lr=3e-4)
    summary = mainrun.run(cfg)
"""
from .config import Config, ConfigError, make_config
from .data import DataError
from .train import run

__all__ = ["Config", "ConfigError", "DataError", "make_config", "run"]

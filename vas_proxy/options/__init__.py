"""Every option of every subcommand, defined once (docs/design.md §5).

    flags.py   `option()` fields → argparse flags → dataclasses (`add_options`, `from_args`)
    groups.py  the groups: upstream, guidance, cache, value loading, serve, limits, generate
    named_specs.py  NAME=SPEC lists of value models and rewards; the default value model

TrainConfig (train/config.py), EvalConfig (eval/config.py) and DemoOptions (demo.py) are
groups too, kept beside the code they configure. To add an option: add an `option()` field to
its group, with its default in `vas_proxy/defaults.py`; the flag, its help and its parsing follow.
"""

from .flags import add_options, comma_list, dest, from_args, option, option_like
from .named_specs import (HEURISTIC_VALUE, default_value_specs, parse_reward_specs,
                    parse_value_specs)
from .groups import (CacheOptions, GenerateOptions, GuidanceOptions, LimitOptions,
                     ServeOptions, UpstreamOptions, ValueLoadOptions)

__all__ = ["HEURISTIC_VALUE", "default_value_specs", "parse_reward_specs", "parse_value_specs",
           "CacheOptions", "GenerateOptions", "GuidanceOptions", "LimitOptions", "ServeOptions",
           "UpstreamOptions", "ValueLoadOptions", "add_options", "comma_list", "dest",
           "from_args", "option", "option_like"]

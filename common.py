"""Shared plumbing for every script: errors, CLI, device, seeding, checkpoints, metrics, snapshots, memory.

(Work in progress: this stub is filled in by the core issue.)
"""
import sys


class UserError(Exception):
    """An error the user caused (bad path, bad flag value, wrong checkpoint).

    Scripts raise it anywhere; `run_main` turns it into one line on stderr and exit status 2.
    """


def run_main(main):
    """Run `main()`; a UserError becomes one clear line and a non-zero exit, never a traceback."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)

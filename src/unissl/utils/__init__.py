"""Small shared utilities: atomic file writing, seeding, git revision."""

from unissl.utils.io import atomic_dir, atomic_file, git_revision, read_json, write_json
from unissl.utils.seed import seed_everything

__all__ = ["atomic_dir", "atomic_file", "git_revision", "read_json", "write_json", "seed_everything"]

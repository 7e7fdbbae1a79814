//! File-system and git adapters for composition.

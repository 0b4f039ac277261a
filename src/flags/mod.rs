//! Command-line flags in the style of ripgrep: every flag is defined once in
//! `defs`; `parse` turns argv into low-level arguments (`lowargs`), and
//! `hiargs` turns those into ready-to-use configuration. `readme` renders
//! README.md's flag and credential tables from the same definitions.

mod defs;
pub mod hiargs;
pub mod lowargs;
mod names;
mod parse;
// Only its test uses it: that is where README.md gets checked and rewritten.
#[cfg(test)]
mod readme;

pub use defs::MIN_PART_SIZE;
pub use lowargs::Role;
pub use parse::{Command, Parsed, UsageError, command_help, parse, top_help};

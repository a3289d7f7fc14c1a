//! What every stage needs and nothing stage-specific: the release
//! configuration, the source being built, git, external tools, progress
//! output, files and archives.

pub mod archive;
pub mod config;
pub mod elf;
pub mod fs;
pub mod git;
pub mod process;
pub mod progress;
pub mod sandbox;
pub mod source;
pub mod tools;

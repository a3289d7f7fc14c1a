//! What every stage needs and nothing stage-specific: the release
//! configuration, the source being built, git, external tools, progress
//! output, files, archives and the cache of archives.

pub mod archive;
pub mod cache;
pub mod cargo_env;
pub mod config;
pub mod elf;
pub mod fs;
pub mod git;
pub mod process;
pub mod progress;
pub mod sandbox;
pub mod source;
pub mod tools;

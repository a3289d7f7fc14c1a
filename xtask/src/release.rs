//! `cargo xtask release`.

use anyhow::{bail, Result};

use crate::flags;

pub fn run(_flags: &flags::Release) -> Result<()> {
    bail!("`cargo xtask release` is not implemented yet")
}

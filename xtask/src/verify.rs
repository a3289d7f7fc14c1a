//! `cargo xtask verify`.

use anyhow::{bail, Result};

use crate::flags;

pub fn run(_flags: &flags::Verify) -> Result<()> {
    bail!("`cargo xtask verify` is not implemented yet")
}

//! `cargo xtask dist`.

use anyhow::{bail, Result};

use crate::flags;

pub fn run(_flags: &flags::Dist) -> Result<()> {
    bail!("`cargo xtask dist` is not implemented yet")
}

//! `cargo xtask image`.

use anyhow::{bail, Result};

use crate::flags;

pub fn run(_flags: &flags::Image) -> Result<()> {
    bail!("`cargo xtask image` is not implemented yet")
}

//! `cargo xtask tags`.

use anyhow::{bail, Result};

use crate::flags;

pub fn run(_flags: &flags::Tags) -> Result<()> {
    bail!("`cargo xtask tags` is not implemented yet")
}

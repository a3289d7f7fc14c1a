//! `cargo xtask sign`.

use anyhow::{bail, Result};

use crate::flags;

pub fn run(_flags: &flags::Sign) -> Result<()> {
    bail!("`cargo xtask sign` is not implemented yet")
}

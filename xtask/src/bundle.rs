//! `cargo xtask bundle`.

use anyhow::{bail, Result};

use crate::flags;

pub fn run(_flags: &flags::Bundle) -> Result<()> {
    bail!("`cargo xtask bundle` is not implemented yet")
}

//! `cargo xtask bench` (being written: see issue 5).
use anyhow::{Result, bail};

pub fn run(_quick: bool) -> Result<()> {
    bail!("the benchmarks are not written yet")
}

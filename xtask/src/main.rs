//! `cargo xtask`: parses the flags and dispatches to the task's `run`.

use std::process::ExitCode;

use clap::Parser;
use xtask::flags::{self, Command};
use xtask::{
    adopt, attest, audit, bench, bundle, chart, clean_cache, conformance, dist, image, pin_base,
    release, sbom, setup, sign, tags, test, verify,
};

fn main() -> ExitCode {
    let flags = flags::Xtask::parse();
    let result = match &flags.command {
        Command::Adopt(flags) => adopt::run(flags),
        Command::Setup(flags) => setup::run(flags),
        Command::Test(flags) => test::run(flags),
        Command::Tags(flags) => tags::run(flags),
        Command::Dist(flags) => dist::run(flags),
        Command::Image(flags) => image::run(flags),
        Command::Sbom(flags) => sbom::run(flags),
        Command::Sign(flags) => sign::run(flags),
        Command::Attest(flags) => attest::run(flags),
        Command::Verify(flags) => verify::run(flags),
        Command::Audit(flags) => audit::run(flags),
        Command::Release(flags) => release::run(flags),
        Command::Bundle(flags) => bundle::run(flags),
        Command::Bench(flags) => bench::run(flags),
        Command::PinBase(flags) => pin_base::run(flags),
        Command::Chart(flags) => chart::run(flags),
        Command::Conformance(flags) => conformance::run(flags),
        Command::CleanCache(flags) => clean_cache::run(flags),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the error and its context, outermost first.
            eprintln!("error: {err:#}");
            // A scan that could not run is not a verdict: CI tells it
            // apart from denied findings (exit 1) by its own code.
            if err.is::<audit::NotRun>() {
                ExitCode::from(audit::EXIT_NOT_RUN)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

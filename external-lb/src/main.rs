//! `external-lb` is not implemented yet: this binary only says so, so that nobody mistakes it for a working component.

fn main() -> std::process::ExitCode {
    eprintln!("external-lb: not implemented yet (see the open issues and external-lb/README.md)");
    std::process::ExitCode::from(2)
}

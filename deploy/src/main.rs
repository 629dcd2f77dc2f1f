//! `deploy` is not implemented yet: this binary only says so, so that nobody mistakes it for a working component.

fn main() -> std::process::ExitCode {
    eprintln!("deploy: not implemented yet (see the open issues and deploy/README.md)");
    std::process::ExitCode::from(2)
}

//! `convoy-nfs` is not implemented yet: this binary only says so, so that nobody mistakes it for a working component.

fn main() -> std::process::ExitCode {
    eprintln!("convoy-nfs: not implemented yet (see the open issues and convoy-nfs/README.md)");
    std::process::ExitCode::from(2)
}

//! `lb-haproxy` is not implemented yet: this binary only says so, so that nobody mistakes it for a working component.

fn main() -> std::process::ExitCode {
    eprintln!("lb-haproxy: not implemented yet (see the open issues and lb-haproxy/README.md)");
    std::process::ExitCode::from(2)
}

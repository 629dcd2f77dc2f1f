fn main() -> std::process::ExitCode {
    event_bus::cli::main()
}

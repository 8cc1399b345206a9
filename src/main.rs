fn main() -> std::process::ExitCode {
    stencilcheck::cli::main()
}

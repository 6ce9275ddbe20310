use clap::Parser;

fn main() {
    let cli = match bootstrapper::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(bootstrapper::cli::usage_error(e)),
    };
    std::process::exit(bootstrapper::cli::run(cli));
}

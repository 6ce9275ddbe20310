use clap::Parser;

fn main() {
    let cli = bootstrapper::cli::Cli::parse();
    std::process::exit(bootstrapper::cli::main(cli));
}

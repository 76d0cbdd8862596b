//! The `sds` binary: the command line (`cli`) and the end-to-end demo (`demo`), built on the
//! `sds` library, which holds the server itself.

mod cli;
mod demo;

fn main() {
    std::process::exit(cli::main());
}

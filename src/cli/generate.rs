//! `sds gen-man DIR` and `sds gen-completions DIR` (hidden): the man pages and the shell
//! completions, made from the clap definitions of this very binary (clap_mangen,
//! clap_complete), so they never drift from `--help`. `scripts/package.sh` runs them on the
//! binary it packages.

use super::Cli;
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::Path;

/// One page per command and subcommand: sds.1, sds-serve.1, sds-lun-create.1, ….
pub fn man_pages(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// sds.bash, _sds (zsh) and sds.fish.
pub fn completions(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "sds", dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}
